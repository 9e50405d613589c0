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

Layout of this package (one concept per file): ``run`` (the API: start, watch and end a run),
``result`` (``SandboxResult`` and how a run's ending is named), ``isolation`` (which layers this
machine allows, probed once; the launcher's command line), ``reaping`` (killing what is left and
removing the run's files), and the child side, standard library only and run by path:
``launcher.py`` (supervisor, limits, privilege drop, the program) and ``audit_hook.py``.
"""

from __future__ import annotations

from ablate.evals.sandbox.isolation import sandbox_isolation
from ablate.evals.sandbox.result import SandboxResult
from ablate.evals.sandbox.run import run_function, run_many, run_program

__all__ = ["SandboxResult", "run_function", "run_many", "run_program", "sandbox_isolation"]
