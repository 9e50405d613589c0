"""The sandbox's child: a script the evaluator runs as ``python -I -S -B launcher.py CONFIG``.

Contract. It runs with the standard library only (no site-packages, no import path: ``-I``
leaves this file's directory off ``sys.path``), so it imports nothing from ablate; its one
companion, ``audit_hook.py`` beside it, is read and executed by path before anything is
mounted. ``CONFIG`` (``argv[1]``) is one JSON object written by ``ablate.evals.sandbox.run``:

* ``probe`` (optional): set up the namespaces' mounts and exit 0 (does this machine allow them?);
* ``mount``: None, or ``{"scratch": [dirs], "work": dir, "opts": tmpfs options}`` (make the tree
  read-only, hide the scratch directories, mount the working directory);
* ``work``: the working directory; ``src``: a readable fd holding the program's source;
* ``ctl``/``status``/``life``: pipe fds: what the program reports (returned values, refusals),
  the supervisor's exit report (the program does not hold it), and a pipe whose write end the
  evaluator holds (end of file: the evaluator is gone, kill the program);
* ``func``: the function to call after the script (``run_function``) or None;
* ``audit``: install the audit hook; ``drop``: ``[uid, gid]`` to run as, or None; ``nproc``: how
  the process limit is applied (``ns``, ``count`` or ``watchdog``); ``limits``: ``cpu`` seconds,
  ``fsize``/``as`` bytes, ``nofile``, ``procs``; ``timeout``: wall-clock seconds.

The interpreter forks: the parent stays a supervisor (``_supervise``) that waits for the
program, kills it at the deadline or when the evaluator is gone, and writes one JSON line
``{"rc", "cpu", "maxrss_kb", "supervisor_kill"}`` to ``status``. The child applies the limits,
drops privileges, installs the hook and runs the program (``_program``). Its exit codes
``EXIT_MEMORY`` and ``EXIT_LAUNCH`` name a status for the evaluator (they grant nothing: any
program may exit with them too). Importing this module runs nothing (the evaluator imports it
for those constants).
"""

import json
import os
import sys

# exit codes of the program process chosen by the launcher
EXIT_MEMORY = 113
EXIT_LAUNCH = 114


def _main():
    # what the supervisor and the program use, imported once before the fork and the uid change
    import linecache  # noqa: F401
    import numbers  # noqa: F401
    import resource  # noqa: F401
    import select  # noqa: F401
    import signal  # noqa: F401
    import time  # noqa: F401
    import traceback

    cfg = json.loads(sys.argv[1])
    # read before the mounts: this file's directory may be hidden by them (a checkout under /tmp)
    install_hook = _load_audit_hook() if cfg.get("audit") else None
    if cfg["mount"]:
        _mounts(cfg["mount"])
    if cfg.get("probe"):
        os._exit(0)
    os.chdir(cfg["work"])
    chunks = []
    while True:
        chunk = os.read(cfg["src"], 1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(cfg["src"])
    source = b"".join(chunks).decode("utf-8", "surrogateescape")
    ctl, status_fd, life = cfg["ctl"], cfg["status"], cfg["life"]
    stdlib_fds = []
    if cfg["drop"]:
        # the program runs as nobody but imports the standard library through directories opened
        # here, so it works even when the interpreter lies under an unreadable home
        for p in sys.path:
            if os.path.isdir(p):
                stdlib_fds.append((p, os.open(p, os.O_RDONLY | os.O_DIRECTORY)))
    pid = os.fork()
    if pid:
        for fd in [ctl] + [fd for _, fd in stdlib_fds]:
            os.close(fd)
        _supervise(pid, cfg, status_fd, life)
        return
    os.close(status_fd)
    os.close(life)
    try:
        _program(cfg, source, ctl, stdlib_fds, install_hook)
    except BaseException:
        try:
            traceback.print_exc()
            sys.stderr.flush()
        finally:
            os._exit(EXIT_LAUNCH)


def _load_audit_hook():
    """``install_hook`` from ``audit_hook.py`` beside this file, executed by path (no import
    path exists here, and the hook must not be importable by the program as a module)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "audit_hook.py")
    with open(path, encoding="utf-8") as f:
        code = compile(f.read(), path, "exec")
    namespace = {"__name__": "ablate_sandbox_audit_hook", "__file__": path}
    exec(code, namespace)
    return namespace["install_hook"]


def _mounts(m):
    # in the new mount namespace (as its root): the whole tree read-only, then fresh tmpfs mounts
    # on the world-writable places and on the working directory
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_ulong,
        ctypes.c_char_p,
    ]

    def mount(source, target, fstype, flags, data, check=True):
        if libc.mount(source, target.encode(), fstype, flags, data) != 0 and check:
            err = ctypes.get_errno()
            raise OSError(err, "mount %s: %s" % (target, os.strerror(err)))

    class MountAttr(ctypes.Structure):
        _fields_ = [
            ("attr_set", ctypes.c_uint64),
            ("attr_clr", ctypes.c_uint64),
            ("propagation", ctypes.c_uint64),
            ("userns_fd", ctypes.c_uint64),
        ]

    done = False
    if os.uname().machine != "alpha":  # mount_setattr(2) is 442 in the unified syscall table
        attr = MountAttr(1, 0, 0, 0)  # MOUNT_ATTR_RDONLY
        libc.syscall.restype = ctypes.c_long
        done = (
            libc.syscall(
                ctypes.c_long(442),
                ctypes.c_int(-100),
                ctypes.c_char_p(b"/"),
                ctypes.c_uint(0x8000),
                ctypes.byref(attr),
                ctypes.c_size_t(ctypes.sizeof(attr)),
            )
            == 0
        )
    if not done:
        # older kernels: remount each mount point read-only, keeping its (possibly locked) flags
        keep = {
            "nosuid": 2,
            "nodev": 4,
            "noexec": 8,
            "noatime": 1024,
            "nodiratime": 2048,
            "relatime": 1 << 21,
            "strictatime": 1 << 24,
        }
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                flags = 1 | 32 | 4096  # MS_RDONLY | MS_REMOUNT | MS_BIND
                for opt in fields[5].split(","):
                    flags |= keep.get(opt, 0)
                target = fields[4].encode().decode("unicode_escape")
                mount(None, target, None, flags, None, check=False)
    small = b"size=1m,nr_inodes=1024,mode=1777"
    for d in m["scratch"]:
        mount(b"ablate-sandbox", d, b"tmpfs", 2 | 4, small)  # MS_NOSUID | MS_NODEV
        if d == "/tmp" and m["work"].startswith("/tmp/"):
            os.mkdir(m["work"], 0o700)
    mount(b"ablate-sandbox", m["work"], b"tmpfs", 2 | 4, m["opts"].encode())
    # the program must not find ctypes already imported (the audit hook refuses a new import)
    for name in [
        n for n in sys.modules if n == "_ctypes" or n == "ctypes" or n.startswith("ctypes.")
    ]:
        del sys.modules[name]


def _supervise(pid, cfg, status_fd, life):
    import select
    import signal
    import time

    deadline = time.monotonic() + cfg["timeout"] + 0.5
    try:
        pfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pfd = None
    why = None
    while True:
        wpid, status, ru = os.wait4(pid, os.WNOHANG)
        if wpid:
            break
        left = deadline - time.monotonic()
        if left <= 0:
            why = "timeout"
        else:
            fds = [life] if pfd is None else [life, pfd]
            r = select.select(fds, [], [], left if pfd is not None else min(left, 0.02))[0]
            if life in r:
                why = "evaluator gone"
        if why:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            wpid, status, ru = os.wait4(pid, 0)
            break
    rep = {
        "rc": os.waitstatus_to_exitcode(status),
        "cpu": ru.ru_utime + ru.ru_stime,
        "maxrss_kb": ru.ru_maxrss,
        "supervisor_kill": why,
    }
    os.write(status_fd, (json.dumps(rep) + "\n").encode())


def _count_tasks(uid):
    n = 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat("/proc/" + name).st_uid == uid:
                    n += len(os.listdir("/proc/%s/task" % name))
            except OSError:
                pass
    return n


def _program(cfg, source, ctl, stdlib_fds, install_hook):
    import linecache
    import numbers
    import resource
    import traceback

    lim = cfg["limits"]

    def setlim(which, soft, hard=None):
        resource.setrlimit(which, (soft, soft if hard is None else hard))

    setlim(resource.RLIMIT_CORE, 0)
    setlim(resource.RLIMIT_CPU, lim["cpu"], lim["cpu"] + 1)
    setlim(resource.RLIMIT_FSIZE, lim["fsize"])
    setlim(resource.RLIMIT_NOFILE, lim["nofile"])
    drop = cfg["drop"]
    if cfg["nproc"] == "ns":
        # counted in the user namespace: this process and its children, the supervisor and the
        # unshare process that made the namespace
        setlim(resource.RLIMIT_NPROC, lim["procs"] + 2)
    elif cfg["nproc"] == "count":
        # RLIMIT_NPROC counts every task of the real user: allow max_procs more than exist now
        # (this process included, which is counted already unless it is about to change uid)
        uid = drop[0] if drop else os.getuid()
        setlim(resource.RLIMIT_NPROC, _count_tasks(uid) - (0 if drop else 1) + lim["procs"])
    if drop:
        uid, gid = drop
        moved = [(p.rstrip("/") + "/", "/proc/self/fd/%d/" % fd) for p, fd in stdlib_fds]
        sys.path[:] = [new[:-1] for _, new in moved]
        sys.path_importer_cache.clear()
        # packages already imported find their submodules through __path__, not sys.path
        for module in list(sys.modules.values()):
            search = getattr(module, "__path__", None)
            if isinstance(search, list):
                for i, entry in enumerate(search):
                    for old, new in moved:
                        if (entry + "/").startswith(old):
                            search[i] = (new + entry[len(old) :]).rstrip("/")
                            break
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
        try:
            os.setuid(0)
        except PermissionError:
            pass
        else:
            raise SystemExit("sandbox: privileges were not dropped")
    filename = "program.py"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    func = cfg["func"]
    if install_hook is not None:
        install_hook(ctl)
    setlim(resource.RLIMIT_AS, lim["as"])
    namespace = {"__name__": "__main__", "__file__": filename, "__builtins__": __builtins__}
    rc = 0
    try:
        try:
            code = compile(source, filename, "exec")
            exec(code, namespace)
            if func is not None:
                fn = namespace.get(func)
                if not callable(fn):
                    raise NameError("the program defines no function %r" % func)
                _send(ctl, _encode(fn(), numbers))
        except SystemExit as e:
            if e.code is None:
                rc = 0
            elif isinstance(e.code, int):
                rc = e.code
            else:
                print(e.code, file=sys.stderr)
                rc = 1
        except MemoryError:
            try:
                sys.stderr.write("MemoryError: the program exceeded its memory limit\n")
            finally:
                _flush_exit(EXIT_MEMORY)
        except BaseException as e:
            # the traceback from the program's own frames on (not this launcher's)
            tb = e.__traceback__.tb_next if e.__traceback__ is not None else None
            traceback.print_exception(type(e), e, tb)
            rc = 1
    except MemoryError:
        _flush_exit(EXIT_MEMORY)
    _flush_exit(rc)


def _flush_exit(rc):
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass
    os._exit(rc & 0xFF if rc >= 0 else 1)


def _encode(value, numbers):
    if isinstance(value, numbers.Rational) and not isinstance(value, int):
        value = float(value)
    elif type(value).__name__ == "Decimal":
        value = float(value)
    try:
        return json.dumps({"value": value})
    except (TypeError, ValueError, RecursionError, OverflowError):
        try:
            return json.dumps({"repr": repr(value)[:100000]})
        except BaseException:
            return json.dumps({"repr": "<unrepresentable %s>" % type(value).__name__})


def _send(fd, line):
    data = (line + "\n").encode("utf-8", "backslashreplace")
    while data:
        n = os.write(fd, data)
        data = data[n:]


if __name__ == "__main__":
    _main()
