"""Run untrusted, model-generated Python: a separate, limited, throw-away process.

``run_program`` runs a source text as a script and returns what it printed; ``run_function`` runs
it, calls ``solution()`` (program-of-thought) and returns the value; ``run_many`` runs many in
parallel, keeping their order. Every failure of the program (an exception, a limit, a blocked
operation) is a ``SandboxResult`` with ``ok=False`` and a ``status``, never an exception in the
evaluator, and no run outlives its call.

Layers (each used where the machine allows it; ``SandboxResult.isolation`` names those a run got,
``sandbox_isolation()`` those a run would get):

* **Process** (``process-group``, ``clean-env``). A fresh interpreter (the evaluator's, resolved
  past any virtual environment, run as ``python -I -S -B``: no site-packages, no ``PYTHON*``
  variables, no bytecode writes; the standard library is kept) in its own session and process
  group, with a minimal environment (``PATH``, ``LANG``/``LC_ALL``, ``HOME`` and ``TMPDIR`` = the
  working directory, and the ``ABLATE_SANDBOX_RUN`` marker = ``SandboxResult.run_id``): nothing
  of the evaluator's environment (tokens, keys) is inherited. The working directory is new and
  removed afterwards; stdin is the given text or empty. The process group is killed when the run
  ends, and a sweep kills (and waits for) every process still carrying the run's marker.
* **A supervisor.** The interpreter forks: the parent stays a small supervisor that waits for the
  program, enforces the wall-clock limit itself too (so a run ends even if the evaluator dies; it
  also watches a pipe the evaluator holds) and reports the exit status and CPU time over a pipe
  the program does not hold.
* **Resource limits** (``rlimits``; in the program, soft = hard): address space (``memory_mb``),
  CPU seconds (``cpu_s``; SIGKILL one second after SIGXCPU), file size (``disk_mb``), open files,
  no core dumps, processes and threads (``max_procs``). ``RLIMIT_NPROC`` counts per user and never
  binds for real uid 0, so: dropped to ``nobody`` it is ``nobody``'s current count plus
  ``max_procs``; a user's program in a user namespace is counted there; a user's program without
  one gets the user's current count plus ``max_procs``; root keeping uid 0 gets a watchdog
  (``proc-watchdog``) that kills the process group when it has more than ``max_procs`` members,
  polled every 50 ms (a fast fork bomb can outrun it: keep ``drop_privileges``).
* **Namespaces** (``unshare``; always as root, as a user where unprivileged user namespaces are
  enabled: then ``userns`` as well). ``netns``: a new network namespace, no interface but a down
  loopback. ``pidns``: a new PID namespace whose init is the supervisor; when it exits the kernel
  kills every process left, including ones that left the process group, and no process outside
  is visible to ``kill``. ``mountns-ro``: a new mount namespace in which the whole file tree is
  read-only (``mount_setattr``, or a remount per mount point on kernels before 5.12), ``/tmp``,
  ``/var/tmp``, ``/dev/shm``, ``/run/lock``, ``/dev/mqueue`` are small private tmpfs mounts and
  the working directory is a tmpfs of ``disk_mb`` (at ``/tmp/work``; in the control directory
  where the interpreter itself lives under ``/tmp``): nothing can be written anywhere else and
  nothing of the evaluator's ``/tmp`` is visible.
* **Dropped privileges** (``uid:65534``; as root, by default): the program runs as ``nobody`` with
  its group and no supplementary groups: the kernel refuses writes to the evaluator's files,
  signals to its processes, reads of their ``/proc/PID/environ`` and of files not readable by
  everyone. The standard library stays importable where it lies under an unreadable home (an
  interpreter installed in root's home): its directories are opened before the drop and the
  program imports through ``/proc/self/fd/N``.
* **An audit hook** (``audit-hook``; ``sys.addaudithook``, installed before the program's first
  line; ``audit=False`` turns it off to test the other layers) refuses: process creation
  (``os.fork``, ``os.system``, ``os.exec*``, ``os.posix_spawn``, ``subprocess.Popen``, ``pty``),
  signals (``os.kill``, ``os.killpg``), sockets and name lookups, importing ``ctypes``,
  ``_ctypes``, ``_posixsubprocess``, ``cffi`` and the interpreters modules, ``gc`` object walks,
  writes (``open`` for writing, ``os.remove``/``rename``/``mkdir``/``chmod``/``link``/
  ``symlink``/``truncate``/``utime``, ``shutil.rmtree`` ...) that resolve (symlinks followed)
  outside the working directory or use ``dir_fd``, opening directories outside it, and reading
  ``/proc/*/environ``, ``/proc/*/mem``, ``/proc/kcore`` and devices other than
  ``/dev/{null,zero,urandom,random}``. A refusal raises ``PermissionError`` in the program and is
  listed in ``SandboxResult.blocked``. Other reads are not restricted by the hook (the standard
  library must be read): as ``nobody`` the kernel limits them to world-readable files.

Guaranteed by the kernel, where the layer is in ``isolation``: the wall-clock, CPU, memory,
file-size and process limits (``nobody`` or a user namespace; the watchdog only polls); no
process left after the call (``pidns``; without it, what stayed in the process group or kept the
marker); no network (``netns``); no writes outside the working directory (``mountns-ro``; without
it, ``nobody`` cannot write the evaluator's files but can write world-writable places such as
``/tmp``); no signals to the evaluator (``pidns`` or ``nobody``); and always: bounded output held
by the evaluator (``max_output`` bytes per stream; more kills the run, or with
``overflow="discard"`` is read and dropped while the run goes on), a bounded time per call.

Not guaranteed:

* The audit hook is **not a security boundary**. It stops ordinary Python code and mistakes (a
  generated ``os.system("rm -rf ...")``), but code that gets native access (a crafted code object,
  an interpreter bug; ``ctypes`` is refused only by the hook), or that patches objects the hook
  relies on (``pathlib`` classes, a path whose ``__fspath__`` changes between check and use), or
  races a symlink between check and use, can bypass it. The kernel layers are the boundary: with
  ``namespaces=False, drop_privileges=False`` as root, or as a user without user namespaces, only
  the hook stops writes to the user's files, network access, signals to the user's processes and
  reads of their environment.
* Without ``pidns``, a process that bypasses the hook, leaves the process group (``setsid``) and
  clears its environment can survive the run.
* Without ``mountns-ro``, the disk is bounded per file (``RLIMIT_FSIZE``) but not in total.
* Timing side channels, contention with other runs for CPU and memory bandwidth, and kernel
  exploits are out of scope: evaluate truly adversarial code inside a VM or container.
* ``status`` and ``value`` come from the program's run; a program can print anything and return
  anything (untrusted output, to be scored, not believed). The exit status is reported by the
  supervisor over its own pipe, which the program does not hold.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ablate.errors import AblateError

# exit codes of the program process chosen by the launcher (any program may also use them; they
# only name the status, they grant nothing)
_EXIT_MEMORY = 113
_EXIT_LAUNCH = 114

@dataclass
class SandboxResult:
    """How one sandboxed run ended.

    ``status``: ``ok`` (exit 0 within every limit; for ``run_function`` also a returned value),
    ``error`` (an exception or a non-zero exit), ``blocked`` (a non-zero exit after the audit hook
    refused an operation), ``timeout`` (wall clock), ``cpu`` (CPU time), ``memory`` (address space:
    a ``MemoryError``), ``output`` (more than ``max_output`` bytes on stdout or stderr), ``procs``
    (more than ``max_procs`` processes, seen by the watchdog), ``crash`` (killed by a signal such
    as SIGSEGV, or the launcher failed), ``killed`` (SIGKILL from outside the sandbox, e.g. the
    kernel's OOM killer).

    ``stdout``/``stderr``: at most ``max_output`` bytes each, decoded as UTF-8 (invalid bytes
    replaced); ``returncode``: the program's exit status (negative: the signal), None when it was
    killed for a limit; ``value``: what ``func()`` returned (``run_function``); ``detail``: one line
    on why it failed; ``cpu_s``: CPU seconds of the program and the children it waited for;
    ``blocked``: the operations the audit hook refused, in order; ``isolation``: the layers used;
    ``run_id``: the run's ``ABLATE_SANDBOX_RUN`` marker; ``truncated``: output beyond
    ``max_output`` was discarded (``overflow="discard"``).
    """

    ok: bool
    status: str
    stdout: str
    stderr: str
    returncode: int | None
    wall_s: float
    value: object | None = None
    detail: str = ""
    cpu_s: float | None = None
    blocked: tuple[str, ...] = ()
    isolation: tuple[str, ...] = field(default_factory=tuple)
    run_id: str = ""
    truncated: bool = False


# --- the code that runs in the sandbox process (stdlib only; a string so it needs no import path)

_LAUNCHER = r'''
import sys, os, json
def _main():
    # what the supervisor and the program use, imported once before the fork and the uid change
    import resource, select, signal, time, traceback, linecache, numbers  # noqa: F401
    cfg = json.loads(sys.argv[1])
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
        _program(cfg, source, ctl, stdlib_fds)
    except BaseException:
        try:
            traceback.print_exc()
            sys.stderr.flush()
        finally:
            os._exit(%(launch)d)

def _mounts(m):
    # in the new mount namespace (as its root): the whole tree read-only, then fresh tmpfs mounts
    # on the world-writable places and on the working directory
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]

    def mount(source, target, fstype, flags, data, check=True):
        if libc.mount(source, target.encode(), fstype, flags, data) != 0 and check:
            err = ctypes.get_errno()
            raise OSError(err, "mount %%s: %%s" %% (target, os.strerror(err)))

    class MountAttr(ctypes.Structure):
        _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                    ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]

    done = False
    if os.uname().machine != "alpha":  # mount_setattr(2) is 442 in the unified syscall table
        attr = MountAttr(1, 0, 0, 0)  # MOUNT_ATTR_RDONLY
        libc.syscall.restype = ctypes.c_long
        done = libc.syscall(ctypes.c_long(442), ctypes.c_int(-100), ctypes.c_char_p(b"/"),
                            ctypes.c_uint(0x8000), ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr))) == 0
    if not done:
        # older kernels: remount each mount point read-only, keeping its (possibly locked) flags
        keep = {"nosuid": 2, "nodev": 4, "noexec": 8, "noatime": 1024, "nodiratime": 2048,
                "relatime": 1 << 21, "strictatime": 1 << 24}
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
    for name in [n for n in sys.modules if n == "_ctypes" or n == "ctypes" or n.startswith("ctypes.")]:
        del sys.modules[name]

def _supervise(pid, cfg, status_fd, life):
    import select, signal, time
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
    rep = {"rc": os.waitstatus_to_exitcode(status), "cpu": ru.ru_utime + ru.ru_stime,
           "maxrss_kb": ru.ru_maxrss, "supervisor_kill": why}
    os.write(status_fd, (json.dumps(rep) + "\n").encode())

def _count_tasks(uid):
    n = 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat("/proc/" + name).st_uid == uid:
                    n += len(os.listdir("/proc/%%s/task" %% name))
            except OSError:
                pass
    return n

def _program(cfg, source, ctl, stdlib_fds):
    import resource, linecache, traceback, numbers
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
        moved = [(p.rstrip("/") + "/", "/proc/self/fd/%%d/" %% fd) for p, fd in stdlib_fds]
        sys.path[:] = [new[:-1] for _, new in moved]
        sys.path_importer_cache.clear()
        # packages already imported find their submodules through __path__, not sys.path
        for module in list(sys.modules.values()):
            search = getattr(module, "__path__", None)
            if isinstance(search, list):
                for i, entry in enumerate(search):
                    for old, new in moved:
                        if (entry + "/").startswith(old):
                            search[i] = (new + entry[len(old):]).rstrip("/")
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
    if cfg["audit"]:
        _install_hook(ctl)
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
                    raise NameError("the program defines no function %%r" %% func)
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
                _flush_exit(_EXIT_MEMORY)
        except BaseException as e:
            # the traceback from the program's own frames on (not this launcher's)
            tb = e.__traceback__.tb_next if e.__traceback__ is not None else None
            traceback.print_exception(type(e), e, tb)
            rc = 1
    except MemoryError:
        _flush_exit(_EXIT_MEMORY)
    _flush_exit(rc)

_EXIT_MEMORY = %(memory)d

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
            return json.dumps({"repr": "<unrepresentable %%s>" %% type(value).__name__})

def _send(fd, line):
    data = (line + "\n").encode("utf-8", "backslashreplace")
    while data:
        n = os.write(fd, data)
        data = data[n:]

def _install_hook(ctl):
    import posix
    _lstat, _readlink, _getcwd, _fspath, _write = posix.lstat, posix.readlink, posix.getcwd, posix.fspath, posix.write
    _str, _bytes, _int, _isinstance, _type, _dumps = str, bytes, int, isinstance, type, json.dumps
    _PermissionError = PermissionError
    write_flags = posix.O_WRONLY | posix.O_RDWR | posix.O_CREAT | posix.O_APPEND | posix.O_TRUNC
    deny = frozenset((
        "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
        "subprocess.Popen", "pty.spawn", "os.startfile", "os.kill", "os.killpg", "signal.pthread_kill",
        "socket.__new__", "socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg",
        "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr", "socket.getnameinfo",
        "socket.gethostname", "socket.sethostname", "urllib.Request", "webbrowser.open",
        "ctypes.dlopen", "ctypes.dlsym", "ctypes.dlsym/handle", "ctypes.cdata", "ctypes.cdata/buffer",
        "ctypes.call_function", "ctypes.addressof", "ctypes.string_at", "ctypes.wstring_at",
        "ctypes.create_string_buffer", "ctypes.create_unicode_buffer", "ctypes.get_errno",
        "ctypes.set_errno", "ctypes.seh_exception", "gc.get_objects", "gc.get_referrers",
        "gc.get_referents", "resource.prlimit", "os.add_dll_directory", "sys.remote_exec",
    ))
    # event -> (indices of path arguments, indices of dir_fd arguments)
    path_events = {
        "os.chmod": ((0,), (2,)), "os.chown": ((0,), (3,)), "os.chflags": ((0,), ()),
        "os.lchflags": ((0,), ()), "os.link": ((0, 1), (2, 3)), "os.mkdir": ((0,), (2,)),
        "os.remove": ((0,), (1,)), "os.rmdir": ((0,), (1,)), "os.rename": ((0, 1), (2, 3)),
        "os.symlink": ((1,), (2,)), "os.truncate": ((0,), ()), "os.utime": ((0,), (3,)),
        "os.setxattr": ((0,), ()), "os.removexattr": ((0,), ()), "shutil.rmtree": ((0,), (1,)),
        "shutil.chown": ((0,), ()), "shutil.move": ((0, 1), ()), "shutil.copyfile": ((1,), ()),
        "shutil.copytree": ((1,), ()), "shutil.make_archive": ((0,), ()),
        "shutil.unpack_archive": ((1,), ()), "tempfile.mkstemp": ((), ()),
    }
    blocked_modules = frozenset((
        "ctypes", "_ctypes", "_posixsubprocess", "_xxsubinterpreters", "_xxinterpchannels",
        "_interpreters", "_interpchannels", "_interpqueues", "_testcapi", "_testinternalcapi",
        "_testbuffer", "_testmultiphase", "_testsinglephase", "_testimportmultiple", "_testclinic",
        "cffi", "_cffi_backend",
    ))
    always_ok = frozenset(("/dev/null", "/dev/zero", "/dev/stdin", "/dev/stdout", "/dev/stderr", "/dev/urandom",
                           "/dev/random", "/dev/full"))

    def as_text(p):
        if _isinstance(p, _str):
            return p
        if _isinstance(p, _bytes):
            return p.decode("utf-8", "surrogateescape")
        if _type(p).__module__.startswith("pathlib"):
            p = _fspath(p)
            return p if _isinstance(p, _str) else p.decode("utf-8", "surrogateescape")
        return None

    def resolve(path):
        # like os.path.realpath(strict=False), built only on captured posix functions
        if not path.startswith("/"):
            path = _getcwd() + "/" + path
        todo = [c for c in path.split("/") if c and c != "."]
        todo.reverse()
        parts = []
        links = 0
        while todo:
            c = todo.pop()
            if c == "..":
                if parts:
                    parts.pop()
                continue
            if c == ".":
                continue
            candidate = "/" + "/".join(parts + [c])
            try:
                st = _lstat(candidate)
            except OSError:
                parts.append(c)
                continue
            if st.st_mode & 0o170000 == 0o120000:
                links += 1
                if links > 40:
                    return None
                target = _readlink(candidate)
                if target.startswith("/"):
                    parts = []
                more = [x for x in target.split("/") if x and x != "."]
                more.reverse()
                todo.extend(more)
            else:
                parts.append(c)
        return "/" + "/".join(parts)

    root = resolve(_getcwd())
    prefix = root.rstrip("/") + "/"

    def inside(p):
        text = as_text(p)
        if text is None:
            return False
        if text in always_ok:
            return True
        r = resolve(text)
        return r is not None and (r == root or r.startswith(prefix))

    def secret(path):
        if path.startswith("/proc/"):
            return path.endswith("/environ") or path.endswith("/mem") or path == "/proc/kcore"
        return path.startswith("/dev/") and path not in always_ok and not path.startswith("/dev/fd/")

    def refuse(event, detail):
        try:
            _write(ctl, (_dumps({"blocked": event, "detail": detail[:200]}) + "\n").encode())
        except BaseException:
            pass
        raise _PermissionError("sandbox: %%s is not allowed (%%s)" %% (event, detail))

    def hook(event, args):
        if event in deny:
            refuse(event, "blocked operation")
        elif event == "open":
            path, mode, flags = args[0], args[1], args[2]
            if _isinstance(path, _int):
                return
            writing = (flags or 0) & write_flags or (
                _isinstance(mode, _str) and ("w" in mode or "a" in mode or "x" in mode or "+" in mode))
            if writing:
                if not inside(path):
                    refuse("open", "write outside the working directory: %%r" %% (path,))
                return
            text = as_text(path)
            if text is None:
                refuse("open", "unsupported path object %%r" %% (_type(path).__name__,))
            if text in always_ok:
                return
            if secret(text):
                refuse("open", "process memory, environment or device: %%r" %% (text,))
            if not inside(text):
                r = resolve(text)
                if r is None:
                    refuse("open", "symlink loop: %%r" %% (text,))
                if secret(r):
                    refuse("open", "process memory, environment or device: %%r" %% (text,))
                try:
                    st = _lstat(r)
                except OSError:
                    return
                if st.st_mode & 0o170000 == 0o040000:
                    refuse("open", "directory outside the working directory: %%r" %% (text,))
        elif event == "import":
            name = args[0]
            if _isinstance(name, _str) and name.partition(".")[0] in blocked_modules:
                refuse("import", name)
        elif event in path_events:
            paths, dirfds = path_events[event]
            for i in dirfds:
                if i < len(args) and args[i] not in (None, -1, -100):  # -1/AT_FDCWD: no dir_fd
                    refuse(event, "dir_fd arguments are not allowed")
            for i in paths:
                if i < len(args) and not _isinstance(args[i], _int) and not inside(args[i]):
                    refuse(event, "outside the working directory: %%r" %% (args[i],))
            if event == "os.symlink":
                # the link's target, read relative to the link's directory, must be inside too
                src, dst = as_text(args[0]), as_text(args[1])
                if src is None or dst is None:
                    refuse(event, "unsupported path object")
                base = resolve(dst)
                if base is None or not inside(src if src.startswith("/") else base.rsplit("/", 1)[0] + "/" + src):
                    refuse(event, "link target outside the working directory: %%r" %% (src,))

    sys.addaudithook(hook)

_main()
''' % {"launch": _EXIT_LAUNCH, "memory": _EXIT_MEMORY}


# --- what this machine allows (probed once per configuration)

_PROBE_LOCK = threading.Lock()
_PROBES: dict[tuple, tuple[str, ...] | None] = {}
_SYSTEM_BIN = ("/usr/bin", "/bin", "/usr/sbin", "/sbin")


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(_SYSTEM_BIN))


@functools.cache
def _nobody() -> tuple[int, int]:
    try:
        import pwd

        pw = pwd.getpwnam("nobody")
        return pw.pw_uid, pw.pw_gid
    except (ImportError, KeyError):
        return 65534, 65534


def _unshare_prefix(userns: bool, mount: bool) -> list[str] | None:
    """The ``unshare`` command line for the wanted namespaces, or None where it is not permitted.

    Probed once per configuration by running the launcher's namespace setup in them.
    """
    key = ("unshare", userns, mount)
    with _PROBE_LOCK:
        if key in _PROBES:
            cached = _PROBES[key]
            return None if cached is None else list(cached)
        unshare = _which("unshare")
        prefix: list[str] | None = None
        if unshare:
            cmd = [unshare] + (["--user", "--map-root-user"] if userns else [])
            cmd += (["--mount"] if mount else []) + ["--net", "--pid", "--fork", "--kill-child"]
            probe_dir = tempfile.mkdtemp(prefix="ablate-sandbox-probe-")
            try:
                cfg = {"probe": True, "mount": _mount_config(probe_dir, "size=1m,mode=0700")[1] if mount else None}
                r = subprocess.run(cmd + [_interpreter(), "-I", "-S", "-B", "-c", _LAUNCHER, json.dumps(cfg)],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   timeout=20, env=_base_env("/"), cwd="/")
                if r.returncode == 0:
                    prefix = cmd
            except (OSError, subprocess.SubprocessError):
                prefix = None
            finally:
                os.rmdir(probe_dir)
        _PROBES[key] = None if prefix is None else tuple(prefix)
        return prefix


# Inside a mount namespace the whole file tree is read-only, the world-writable places are
# replaced by small private tmpfs mounts and the program works in a size-limited tmpfs: at
# /tmp/work under a private /tmp (nothing of the evaluator's /tmp, the control directory
# included, is visible), or, where the interpreter itself lives under /tmp (a virtual
# environment there), on the control directory's work/.
_NS_WORK = "/tmp/work"
_SCRATCH = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/dev/mqueue")


def _interpreter() -> str:
    # the real file: a virtual environment adds nothing under -S, and its directory may be hidden
    return os.path.realpath(sys.executable)


@functools.cache
def _scratch_dirs() -> tuple[str, ...]:
    """The world-writable directories to hide: those that exist and hold nothing the run needs."""
    import sysconfig

    paths = sysconfig.get_paths()
    needed = [os.path.realpath(p) for p in (_interpreter(), sys.base_prefix, paths.get("stdlib", ""),
                                            paths.get("platstdlib", "")) if p]
    hidden = []
    for d in _SCRATCH:
        if os.path.isdir(d) and not os.path.islink(d) and not any(p == d or p.startswith(d + "/") for p in needed):
            hidden.append(d)
    return tuple(hidden)


def _mount_config(control_work: str, work_options: str) -> tuple[str, dict]:
    """The working directory and the launcher's mount instructions."""
    scratch = _scratch_dirs()
    work = _NS_WORK if "/tmp" in scratch else control_work
    return work, {"scratch": list(scratch), "work": work, "opts": work_options}


def _base_env(home: str) -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
            "HOME": home, "TMPDIR": home}


@dataclass(frozen=True)
class _Plan:
    prefix: list[str]
    mount: bool
    drop: tuple[int, int] | None
    nproc: str  # RLIMIT_NPROC: "ns" counted in the user namespace, "count" current tasks + max_procs; "watchdog"
    isolation: tuple[str, ...]


def _plan(namespaces: bool | None, drop_privileges: bool | None, audit: bool) -> _Plan:
    root = os.geteuid() == 0
    if drop_privileges and not root:
        raise AblateError("sandbox: drop_privileges=True needs root (a user's programs already run as that user)")
    drop = _nobody() if root and drop_privileges is not False else None
    prefix, mount, userns = None, False, False
    if namespaces is not False:
        # a user namespace where no uid change happens: a user (who may create namespaces only
        # in one), or root keeping uid 0 (root there has no capabilities over the machine's
        # namespaces); root dropping to nobody needs none
        userns = not root or drop is None
        for want_mount in (True, False):
            prefix = _unshare_prefix(userns, want_mount)
            if prefix is not None:
                mount = want_mount
                break
        if prefix is None and namespaces:
            raise AblateError("sandbox: namespaces=True but this machine does not permit them "
                              "(unshare missing or refused; unprivileged user namespaces disabled?)")
    isolation = ["process-group", "rlimits", "clean-env"]
    if prefix is not None:
        isolation += (["userns"] if userns else []) + ["netns", "pidns"] + (["mountns-ro"] if mount else [])
    if drop is not None:
        isolation.append(f"uid:{drop[0]}")
    if audit:
        isolation.append("audit-hook")
    if root and drop is None:
        # the kernel never applies RLIMIT_NPROC to real uid 0, not even inside a user namespace
        nproc = "watchdog"
        isolation.append("proc-watchdog")
    elif prefix is not None and userns:
        nproc = "ns"
    else:
        nproc = "count"
    return _Plan(prefix or [], mount, drop, nproc, tuple(isolation))


def sandbox_isolation(*, namespaces: bool | None = None, drop_privileges: bool | None = None,
                      audit: bool = True) -> tuple[str, ...]:
    """The layers a run with these options gets on this machine (see the module docstring)."""
    return _plan(namespaces, drop_privileges, audit).isolation


# --- the evaluator side


def _session_members(sid: int) -> list[int]:
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 3 and int(fields[3]) == sid:
            pids.append(int(name))
    return pids


def _sweep(marker: bytes) -> int:
    """SIGKILL every process whose environment carries this run's marker; return how many."""
    killed = 0
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        if marker in env.split(b"\0"):
            try:
                os.kill(int(name), signal.SIGKILL)
                killed += 1
            except OSError:
                pass
    return killed


def _sweep_until_gone(marker: bytes, limit_s: float = 5.0) -> None:
    deadline = time.monotonic() + limit_s
    delay = 0.001
    while _sweep(marker) and time.monotonic() < deadline:
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _rmtree(path: str) -> None:
    def retry(func, p, _exc):
        # a program may leave a directory without permissions: restore them and try again
        try:
            os.chmod(os.path.dirname(p), 0o700)
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, 0o700)
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=retry)


def _decode(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def run_program(source: str, *, timeout_s: float = 5.0, cpu_s: float | None = None, memory_mb: int = 512,
                max_output: int = 64_000, stdin: str | bytes | None = None, max_procs: int = 16,
                disk_mb: int = 64, max_open_files: int = 64, audit: bool = True,
                namespaces: bool | None = None, drop_privileges: bool | None = None,
                tmp_root: str | None = None, overflow: str = "kill") -> SandboxResult:
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
    return _run(source, None, timeout_s=timeout_s, cpu_s=cpu_s, memory_mb=memory_mb, max_output=max_output,
                stdin=stdin, max_procs=max_procs, disk_mb=disk_mb, max_open_files=max_open_files, audit=audit,
                namespaces=namespaces, drop_privileges=drop_privileges, tmp_root=tmp_root, overflow=overflow)


def run_function(source: str, func: str = "solution", **limits) -> SandboxResult:
    """Run ``source``, call ``func()`` with no arguments and return its value in ``.value``.

    The value crosses the process boundary as JSON (tuples become lists; fractions and decimals
    become floats); anything else comes back as its ``repr`` string. ``ok`` needs both a clean
    exit and a returned value. Limits as for ``run_program``.
    """
    return _run(source, func, **limits)


def run_many(sources: list[str], *, workers: int | None = None, func: str | None = None,
             **limits) -> list[SandboxResult]:
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


def _run(source: str, func: str | None, *, timeout_s: float = 5.0, cpu_s: float | None = None,
         memory_mb: int = 512, max_output: int = 64_000, stdin: str | bytes | None = None,
         max_procs: int = 16, disk_mb: int = 64, max_open_files: int = 64, audit: bool = True,
         namespaces: bool | None = None, drop_privileges: bool | None = None,
         tmp_root: str | None = None, overflow: str = "kill") -> SandboxResult:
    if overflow not in ("kill", "discard"):
        raise AblateError(f"sandbox: overflow must be 'kill' or 'discard', got {overflow!r}")
    if not (timeout_s > 0 and memory_mb > 0 and max_output > 0 and max_procs >= 1 and disk_mb > 0
            and max_open_files >= 8 and (cpu_s is None or cpu_s > 0)):
        raise AblateError("sandbox: timeout_s, cpu_s, memory_mb, max_output, max_procs and disk_mb must be "
                          "positive and max_open_files at least 8")
    plan = _plan(namespaces, drop_privileges, audit)
    cpu = int(-(-(cpu_s if cpu_s is not None else timeout_s) // 1))
    limits = {"cpu": max(1, cpu), "fsize": disk_mb << 20, "nofile": max_open_files,
              "procs": max_procs, "as": memory_mb << 20}
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
            work, mount = _mount_config(os.path.join(control, "work"), opts)
        else:
            work = os.path.join(control, "work")
        if work != _NS_WORK:
            os.mkdir(work, 0o700)
            if plan.drop is not None:
                os.chown(work, *plan.drop)
                # nobody may pass through (not list) the control directory, so that the working
                # directory's absolute path (HOME, TMPDIR) works when the parents allow it
                os.chmod(control, 0o711)
        src_path = os.path.join(control, "program.py")
        with open(os.open(src_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w", encoding="utf-8",
                  errors="surrogateescape") as f:
            f.write(source)
        src_fd = os.open(src_path, os.O_RDONLY)
        fds.append(src_fd)
        stdin_path = os.devnull
        if stdin is not None:
            stdin_path = os.path.join(control, "stdin")
            with open(os.open(stdin_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
                f.write(stdin.encode("utf-8") if isinstance(stdin, str) else stdin)
        env = _base_env(work)
        env["ABLATE_SANDBOX_RUN"] = token
        for _ in range(3):
            fds.extend(os.pipe())
        ctl_r, ctl_w, st_r, st_w, life_r, life_w = fds[1:]
        cfg = {"work": work, "src": src_fd, "ctl": ctl_w, "status": st_w, "life": life_r, "func": func,
               "audit": audit, "drop": list(plan.drop) if plan.drop else None, "nproc": plan.nproc,
               "limits": limits, "timeout": timeout_s, "mount": mount}
        cmd = list(plan.prefix) + [_interpreter(), "-I", "-S", "-B", "-c", _LAUNCHER, json.dumps(cfg)]
        try:
            with open(stdin_path, "rb") as stdin_file:
                proc = subprocess.Popen(cmd, stdin=stdin_file, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        pass_fds=(src_fd, ctl_w, st_w, life_r), close_fds=True, start_new_session=True,
                                        env=env, cwd=control)
        except OSError as e:
            return SandboxResult(False, "crash", "", "", None, time.monotonic() - start,
                                 detail=f"could not start the sandbox: {e}", isolation=plan.isolation,
                                 run_id=token)
        for fd in (src_fd, ctl_w, st_w, life_r):
            os.close(fd)
            fds.remove(fd)
        out, err, ctl, status, reason = _watch(proc, plan, ctl_r, st_r, life_w, fds, start + timeout_s,
                                               limits["procs"], max_output, overflow == "discard")
        wall = time.monotonic() - start
        result = _result(plan, func, out, err, ctl, status, proc.returncode, reason, wall, limits, timeout_s,
                         max_output)
        result.run_id = token
        result.truncated = reason == "truncated"
        return result
    finally:
        if proc is not None:
            if proc.returncode is None:
                _killpg(proc.pid)
                proc.kill()
                proc.wait()
            for stream in (proc.stdout, proc.stderr):
                stream.close()
            # kill anything of this run still alive (without a PID namespace: what left the
            # process group; with one: what the kernel has not finished killing) and wait for it
            _sweep_until_gone(f"ABLATE_SANDBOX_RUN={token}".encode())
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass
        _rmtree(control)


def _watch(proc, plan: _Plan, ctl_r: int, st_r: int, life_w: int, fds: list[int], deadline: float,
           max_procs: int, max_output: int, discard: bool = False):
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
                _killpg(pgid)  # unreaped, the leader keeps the group id from being reused
            if exited_at is not None and (not any(fd in sel.get_map() for fd in caps) or now - exited_at > 0.5):
                break
            if exited_at is None and now >= deadline:
                reason = "timeout"
                break
            if plan.nproc == "watchdog" and exited_at is None and now >= next_watch:
                next_watch = now + 0.05
                if len(_session_members(pgid)) - 1 > max_procs:  # the supervisor is not the program's
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
                buf += data[:max(0, room)]
                if len(data) > room and fd in (out_fd, err_fd):
                    if discard:
                        truncated = True  # keep draining the pipe; what is beyond the cap is dropped
                    else:
                        reason = "output"
    finally:
        _killpg(pgid)
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
        buf += data[:max(0, cap - len(buf))]


def _json_lines(data: bytes):
    for line in data.splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if isinstance(msg, dict):
            yield msg


def _result(plan: _Plan, func, out: bytes, err: bytes, ctl: bytes, status: bytes, launcher_rc, reason, wall,
            limits, timeout_s, max_output) -> SandboxResult:
    blocked: list[str] = []
    value, have_value = None, False
    for msg in _json_lines(ctl):
        if "blocked" in msg:
            if len(blocked) < 100:
                blocked.append(str(msg["blocked"]))
        elif "value" in msg:
            value, have_value = msg["value"], True
        elif "repr" in msg:
            value, have_value = msg["repr"], True
    report = None
    for msg in _json_lines(status):
        if "rc" in msg:
            report = msg
    rc = report.get("rc") if report else None
    cpu = report.get("cpu") if report else None
    stdout, stderr = _decode(out), _decode(err)
    if reason == "timeout" or (report and report.get("supervisor_kill") == "timeout"):
        kind, detail = "timeout", f"wall-clock limit of {timeout_s:g} s exceeded"
    elif reason == "output":
        kind, detail = "output", f"more than {max_output} bytes of output"
    elif reason == "procs":
        kind, detail = "procs", f"more than {limits['procs']} processes"
    elif report is None or not isinstance(rc, int):
        kind = "crash"
        detail = f"the sandbox ended without a report (launcher exit status {launcher_rc})"
    elif rc == 0:
        if func is not None and not have_value:
            kind, detail = "error", f"the program exited before {func}() returned"
        else:
            kind, detail = "ok", ""
    elif rc == _EXIT_MEMORY or (rc == -signal.SIGABRT and "MemoryError" in stderr):
        kind, detail = "memory", f"memory limit of {limits['as'] >> 20} MiB exceeded"
    elif rc == -signal.SIGXCPU or (rc == -signal.SIGKILL and cpu is not None and cpu >= limits["cpu"] - 0.05):
        kind, detail = "cpu", f"CPU-time limit of {limits['cpu']} s exceeded"
    elif rc == -signal.SIGKILL:
        kind, detail = "killed", "killed by SIGKILL from outside the sandbox"
    elif rc < 0:
        kind, detail = "crash", f"killed by {_signal_name(-rc)}"
    elif rc == _EXIT_LAUNCH:
        kind, detail = "crash", "the sandbox launcher failed (see stderr)"
    elif blocked:
        kind, detail = "blocked", "blocked: " + ", ".join(dict.fromkeys(blocked))
    else:
        kind, detail = "error", f"exit status {rc}"
    return SandboxResult(ok=kind == "ok", status=kind, stdout=stdout, stderr=stderr, returncode=rc,
                         wall_s=wall, value=value if have_value else None, detail=detail,
                         cpu_s=cpu, blocked=tuple(blocked), isolation=plan.isolation)
