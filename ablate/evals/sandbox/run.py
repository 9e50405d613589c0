"""Running programs in the sandbox: ``run_program``, ``run_function``, ``run_many``.

Contract: each call makes a throw-away control directory (the program's source, its stdin, its
working directory), starts ``launcher.py`` under the isolation ``plan_isolation`` chose, reads
the run's stdout, stderr, control and status pipes with bounded buffers until it ends or breaks
a limit (``_watch``), classifies the ending (``result.classify``) and, whatever happened, kills
the run's process group, sweeps the processes carrying its marker and removes the directory.
Every failure of the program is a ``SandboxResult``; only bad arguments (``AblateError``)
raise. The layers and guarantees are described in ``ablate.evals.sandbox``.
"""

from __future__ import annotations

import os
import secrets
import selectors
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from ablate.errors import AblateError
from ablate.evals.sandbox.isolation import (
    NS_WORK,
    Plan,
    base_env,
    launcher_command,
    mount_config,
    plan_isolation,
)
from ablate.evals.sandbox.reaping import killpg, rmtree, session_members, sweep_until_gone
from ablate.evals.sandbox.result import SandboxResult, classify


def run_program(
    source: str,
    *,
    timeout_s: float = 5.0,
    cpu_s: float | None = None,
    memory_mb: int = 512,
    max_output: int = 64_000,
    stdin: str | bytes | None = None,
    max_procs: int = 16,
    disk_mb: int = 64,
    max_open_files: int = 64,
    audit: bool = True,
    namespaces: bool | None = None,
    drop_privileges: bool | None = None,
    tmp_root: str | None = None,
    overflow: str = "kill",
) -> SandboxResult:
    """Run ``source`` as a script in the sandbox; return its exit status and (bounded) output.

    ``timeout_s`` is wall clock; ``cpu_s`` defaults to it (rounded up); ``memory_mb`` bounds the
    address space; ``max_output`` bytes of stdout and of stderr are kept, more kills the run
    (``overflow="kill"``, status ``output``) or is discarded (``overflow="discard"``: the run goes
    on, ``truncated`` is set; what a program prints is then no reason to fail it);
    ``max_procs`` bounds processes and threads; ``disk_mb`` bounds each file (and the whole
    directory where a mount namespace is available). ``namespaces``/``drop_privileges``: None uses
    them where the machine allows, True requires them, False turns them off; ``audit=False``
    turns the audit hook off (for testing the other layers). ``tmp_root``: where the throw-away
    directory is made (default: the system temporary directory).
    """
    return _run(
        source,
        None,
        timeout_s=timeout_s,
        cpu_s=cpu_s,
        memory_mb=memory_mb,
        max_output=max_output,
        stdin=stdin,
        max_procs=max_procs,
        disk_mb=disk_mb,
        max_open_files=max_open_files,
        audit=audit,
        namespaces=namespaces,
        drop_privileges=drop_privileges,
        tmp_root=tmp_root,
        overflow=overflow,
    )


def run_function(source: str, func: str = "solution", **limits) -> SandboxResult:
    """Run ``source``, call ``func()`` with no arguments and return its value in ``.value``.

    The value crosses the process boundary as JSON (tuples become lists; fractions and decimals
    become floats); anything else comes back as its ``repr`` string. ``ok`` needs both a clean
    exit and a returned value. Limits as for ``run_program``.
    """
    return _run(source, func, **limits)


def run_many(
    sources: list[str], *, workers: int | None = None, func: str | None = None, **limits
) -> list[SandboxResult]:
    """Run many programs, at most ``workers`` at a time (default: CPU count); results in order.

    With ``func`` each is run by ``run_function``, otherwise by ``run_program``.
    """
    sources = list(sources)
    if not sources:
        return []
    workers = max(1, min(len(sources), workers or os.cpu_count() or 1))
    if func is None:

        def one(src):
            return run_program(src, **limits)
    else:

        def one(src):
            return run_function(src, func, **limits)

    if workers == 1:
        return [one(s) for s in sources]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox") as pool:
        return list(pool.map(one, sources))


def _run(
    source: str,
    func: str | None,
    *,
    timeout_s: float = 5.0,
    cpu_s: float | None = None,
    memory_mb: int = 512,
    max_output: int = 64_000,
    stdin: str | bytes | None = None,
    max_procs: int = 16,
    disk_mb: int = 64,
    max_open_files: int = 64,
    audit: bool = True,
    namespaces: bool | None = None,
    drop_privileges: bool | None = None,
    tmp_root: str | None = None,
    overflow: str = "kill",
) -> SandboxResult:
    if overflow not in ("kill", "discard"):
        raise AblateError(f"sandbox: overflow must be 'kill' or 'discard', got {overflow!r}")
    if not (
        timeout_s > 0
        and memory_mb > 0
        and max_output > 0
        and max_procs >= 1
        and disk_mb > 0
        and max_open_files >= 8
        and (cpu_s is None or cpu_s > 0)
    ):
        raise AblateError(
            "sandbox: timeout_s, cpu_s, memory_mb, max_output, max_procs and disk_mb "
            "must be positive and max_open_files at least 8"
        )
    plan = plan_isolation(namespaces, drop_privileges, audit)
    cpu = int(-(-(cpu_s if cpu_s is not None else timeout_s) // 1))
    limits = {
        "cpu": max(1, cpu),
        "fsize": disk_mb << 20,
        "nofile": max_open_files,
        "procs": max_procs,
        "as": memory_mb << 20,
    }
    token = secrets.token_hex(8)
    start = time.monotonic()
    control = tempfile.mkdtemp(prefix="ablate-sandbox-", dir=tmp_root)
    fds: list[int] = []
    proc = None
    try:
        mount = None
        if plan.mount:
            opts = f"size={disk_mb}m,nr_inodes=16384,mode=0700"
            if plan.drop is not None:
                opts += f",uid={plan.drop[0]},gid={plan.drop[1]}"
            work, mount = mount_config(os.path.join(control, "work"), opts)
        else:
            work = os.path.join(control, "work")
        if work != NS_WORK:
            os.mkdir(work, 0o700)
            if plan.drop is not None:
                os.chown(work, *plan.drop)
                # nobody may pass through (not list) the control directory, so that the working
                # directory's absolute path (HOME, TMPDIR) works when the parents allow it
                os.chmod(control, 0o711)
        src_path = os.path.join(control, "program.py")
        with open(
            os.open(src_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600),
            "w",
            encoding="utf-8",
            errors="surrogateescape",
        ) as f:
            f.write(source)
        src_fd = os.open(src_path, os.O_RDONLY)
        fds.append(src_fd)
        stdin_path = os.devnull
        if stdin is not None:
            stdin_path = os.path.join(control, "stdin")
            with open(os.open(stdin_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
                f.write(stdin.encode("utf-8") if isinstance(stdin, str) else stdin)
        env = base_env(work)
        env["ABLATE_SANDBOX_RUN"] = token
        for _ in range(3):
            fds.extend(os.pipe())
        ctl_r, ctl_w, st_r, st_w, life_r, life_w = fds[1:]
        cfg = {
            "work": work,
            "src": src_fd,
            "ctl": ctl_w,
            "status": st_w,
            "life": life_r,
            "func": func,
            "audit": audit,
            "drop": list(plan.drop) if plan.drop else None,
            "nproc": plan.nproc,
            "limits": limits,
            "timeout": timeout_s,
            "mount": mount,
        }
        cmd = list(plan.prefix) + launcher_command(cfg)
        try:
            with open(stdin_path, "rb") as stdin_file:
                proc = subprocess.Popen(
                    cmd,
                    stdin=stdin_file,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    pass_fds=(src_fd, ctl_w, st_w, life_r),
                    close_fds=True,
                    start_new_session=True,
                    env=env,
                    cwd=control,
                )
        except OSError as e:
            return SandboxResult(
                False,
                "crash",
                "",
                "",
                None,
                time.monotonic() - start,
                detail=f"could not start the sandbox: {e}",
                isolation=plan.isolation,
                run_id=token,
            )
        for fd in (src_fd, ctl_w, st_w, life_r):
            os.close(fd)
            fds.remove(fd)
        out, err, ctl, status, reason = _watch(
            proc,
            plan,
            ctl_r,
            st_r,
            life_w,
            fds,
            start + timeout_s,
            limits["procs"],
            max_output,
            overflow == "discard",
        )
        wall = time.monotonic() - start
        result = classify(
            plan,
            func,
            out,
            err,
            ctl,
            status,
            proc.returncode,
            reason,
            wall,
            limits,
            timeout_s,
            max_output,
        )
        result.run_id = token
        result.truncated = reason == "truncated"
        return result
    finally:
        if proc is not None:
            if proc.returncode is None:
                killpg(proc.pid)
                proc.kill()
                proc.wait()
            for stream in (proc.stdout, proc.stderr):
                stream.close()
            # kill anything of this run still alive (without a PID namespace: what left the
            # process group; with one: what the kernel has not finished killing) and wait for it
            sweep_until_gone(f"ABLATE_SANDBOX_RUN={token}".encode())
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass
        rmtree(control)


def _watch(
    proc,
    plan: Plan,
    ctl_r: int,
    st_r: int,
    life_w: int,
    fds: list[int],
    deadline: float,
    max_procs: int,
    max_output: int,
    discard: bool = False,
):
    """Read the run's pipes until it ends or breaks a limit; kill its group; reap it."""
    pgid = proc.pid
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    caps = {out_fd: max_output, err_fd: max_output, ctl_r: 1 << 20, st_r: 1 << 16}
    bufs = {fd: bytearray() for fd in caps}
    sel = selectors.DefaultSelector()
    for fd in caps:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    try:
        pidfd = os.pidfd_open(proc.pid)
        sel.register(pidfd, selectors.EVENT_READ)
    except (AttributeError, OSError):
        pidfd = None
    reason = None
    truncated = False
    exited_at = None
    next_watch = 0.0
    try:
        while reason is None:
            now = time.monotonic()
            if exited_at is None and _exited(proc.pid):
                exited_at = now
                killpg(pgid)  # unreaped, the leader keeps the group id from being reused
            drained = not any(fd in sel.get_map() for fd in caps)
            if exited_at is not None and (drained or now - exited_at > 0.5):
                break
            if exited_at is None and now >= deadline:
                reason = "timeout"
                break
            if plan.nproc == "watchdog" and exited_at is None and now >= next_watch:
                next_watch = now + 0.05
                # the supervisor is not the program's
                if len(session_members(pgid)) - 1 > max_procs:
                    reason = "procs"
                    break
            wait = (deadline if exited_at is None else exited_at + 0.5) - now
            if pidfd is None:
                wait = min(wait, 0.02)
            elif plan.nproc == "watchdog":
                wait = min(wait, 0.05)
            for key, _ in sel.select(max(0.0, wait)):
                fd = key.fd
                if fd == pidfd:
                    sel.unregister(pidfd)
                    continue
                try:
                    data = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                if not data:
                    sel.unregister(fd)
                    continue
                buf = bufs[fd]
                room = caps[fd] - len(buf)
                buf += data[: max(0, room)]
                if len(data) > room and fd in (out_fd, err_fd):
                    if discard:
                        # keep draining the pipe; what is beyond the cap is dropped
                        truncated = True
                    else:
                        reason = "output"
    finally:
        killpg(pgid)
        os.close(life_w)
        fds.remove(life_w)
        sel.close()
        if pidfd is not None:
            os.close(pidfd)
    _, status, _ = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    for fd in (st_r, ctl_r):  # after a kill: what is already in the pipe, without waiting for more
        _drain(fd, bufs[fd], caps[fd])
    if reason is None and truncated:
        reason = "truncated"
    return bytes(bufs[out_fd]), bytes(bufs[err_fd]), bytes(bufs[ctl_r]), bytes(bufs[st_r]), reason


def _exited(pid: int) -> bool:
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _drain(fd: int, buf: bytearray, cap: int) -> None:
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:
            return
        if not data:
            return
        buf += data[: max(0, cap - len(buf))]
