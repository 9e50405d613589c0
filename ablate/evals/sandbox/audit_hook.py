"""The sandbox's audit hook (``sys.addaudithook``), installed in the program's process before
the program's first line.

Contract: ``install_hook(ctl)`` refuses process creation, signals, sockets and name lookups,
native-code modules (``ctypes``, ``cffi``, the interpreters modules), ``gc`` object walks,
writes that resolve outside the working directory (or use ``dir_fd``), opening directories
outside it, and reading process memory, environments and devices; each refusal raises
``PermissionError`` in the program and is reported as one JSON line ``{"blocked": event,
"detail": ...}`` on ``ctl``. It is not a security boundary (see ``ablate.evals.sandbox``).

Standard library only: ``launcher.py`` executes this file by path in the sandbox's interpreter
(``-I -S``), where no import path leads to ablate.
"""

import json
import sys


def install_hook(ctl):
    """Install the audit hook; ``ctl`` is the fd refusals are reported on (one JSON line each)."""
    import posix

    # the hook only uses functions captured here: a program that replaces os.* or builtins
    # afterwards does not change what the hook sees
    _lstat, _readlink, _getcwd = posix.lstat, posix.readlink, posix.getcwd
    _fspath, _write = posix.fspath, posix.write
    _str, _bytes, _int, _isinstance, _type, _dumps = str, bytes, int, isinstance, type, json.dumps
    _PermissionError = PermissionError
    write_flags = posix.O_WRONLY | posix.O_RDWR | posix.O_CREAT | posix.O_APPEND | posix.O_TRUNC
    deny = frozenset(
        (
            "os.system",
            "os.exec",
            "os.posix_spawn",
            "os.spawn",
            "os.fork",
            "os.forkpty",
            "subprocess.Popen",
            "pty.spawn",
            "os.startfile",
            "os.kill",
            "os.killpg",
            "signal.pthread_kill",
            "socket.__new__",
            "socket.connect",
            "socket.bind",
            "socket.sendto",
            "socket.sendmsg",
            "socket.getaddrinfo",
            "socket.gethostbyname",
            "socket.gethostbyaddr",
            "socket.getnameinfo",
            "socket.gethostname",
            "socket.sethostname",
            "urllib.Request",
            "webbrowser.open",
            "ctypes.dlopen",
            "ctypes.dlsym",
            "ctypes.dlsym/handle",
            "ctypes.cdata",
            "ctypes.cdata/buffer",
            "ctypes.call_function",
            "ctypes.addressof",
            "ctypes.string_at",
            "ctypes.wstring_at",
            "ctypes.create_string_buffer",
            "ctypes.create_unicode_buffer",
            "ctypes.get_errno",
            "ctypes.set_errno",
            "ctypes.seh_exception",
            "gc.get_objects",
            "gc.get_referrers",
            "gc.get_referents",
            "resource.prlimit",
            "os.add_dll_directory",
            "sys.remote_exec",
        )
    )
    # event -> (indices of path arguments, indices of dir_fd arguments)
    path_events = {
        "os.chmod": ((0,), (2,)),
        "os.chown": ((0,), (3,)),
        "os.chflags": ((0,), ()),
        "os.lchflags": ((0,), ()),
        "os.link": ((0, 1), (2, 3)),
        "os.mkdir": ((0,), (2,)),
        "os.remove": ((0,), (1,)),
        "os.rmdir": ((0,), (1,)),
        "os.rename": ((0, 1), (2, 3)),
        "os.symlink": ((1,), (2,)),
        "os.truncate": ((0,), ()),
        "os.utime": ((0,), (3,)),
        "os.setxattr": ((0,), ()),
        "os.removexattr": ((0,), ()),
        "shutil.rmtree": ((0,), (1,)),
        "shutil.chown": ((0,), ()),
        "shutil.move": ((0, 1), ()),
        "shutil.copyfile": ((1,), ()),
        "shutil.copytree": ((1,), ()),
        "shutil.make_archive": ((0,), ()),
        "shutil.unpack_archive": ((1,), ()),
        "tempfile.mkstemp": ((), ()),
    }
    blocked_modules = frozenset(
        (
            "ctypes",
            "_ctypes",
            "_posixsubprocess",
            "_xxsubinterpreters",
            "_xxinterpchannels",
            "_interpreters",
            "_interpchannels",
            "_interpqueues",
            "_testcapi",
            "_testinternalcapi",
            "_testbuffer",
            "_testmultiphase",
            "_testsinglephase",
            "_testimportmultiple",
            "_testclinic",
            "cffi",
            "_cffi_backend",
        )
    )
    always_ok = frozenset(
        (
            "/dev/null",
            "/dev/zero",
            "/dev/stdin",
            "/dev/stdout",
            "/dev/stderr",
            "/dev/urandom",
            "/dev/random",
            "/dev/full",
        )
    )

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
        return (
            path.startswith("/dev/") and path not in always_ok and not path.startswith("/dev/fd/")
        )

    def refuse(event, detail):
        try:
            _write(ctl, (_dumps({"blocked": event, "detail": detail[:200]}) + "\n").encode())
        except BaseException:
            pass
        raise _PermissionError("sandbox: %s is not allowed (%s)" % (event, detail))

    def hook(event, args):
        if event in deny:
            refuse(event, "blocked operation")
        elif event == "open":
            path, mode, flags = args[0], args[1], args[2]
            if _isinstance(path, _int):
                return
            writing = (flags or 0) & write_flags or (
                _isinstance(mode, _str)
                and ("w" in mode or "a" in mode or "x" in mode or "+" in mode)
            )
            if writing:
                if not inside(path):
                    refuse("open", "write outside the working directory: %r" % (path,))
                return
            text = as_text(path)
            if text is None:
                refuse("open", "unsupported path object %r" % (_type(path).__name__,))
            if text in always_ok:
                return
            if secret(text):
                refuse("open", "process memory, environment or device: %r" % (text,))
            if not inside(text):
                r = resolve(text)
                if r is None:
                    refuse("open", "symlink loop: %r" % (text,))
                if secret(r):
                    refuse("open", "process memory, environment or device: %r" % (text,))
                try:
                    st = _lstat(r)
                except OSError:
                    return
                if st.st_mode & 0o170000 == 0o040000:
                    refuse("open", "directory outside the working directory: %r" % (text,))
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
                    refuse(event, "outside the working directory: %r" % (args[i],))
            if event == "os.symlink":
                # the link's target, read relative to the link's directory, must be inside too
                src, dst = as_text(args[0]), as_text(args[1])
                if src is None or dst is None:
                    refuse(event, "unsupported path object")
                base = resolve(dst)
                outside = base is None or not inside(
                    src if src.startswith("/") else base.rsplit("/", 1)[0] + "/" + src
                )
                if outside:
                    refuse(event, "link target outside the working directory: %r" % (src,))

    sys.addaudithook(hook)
