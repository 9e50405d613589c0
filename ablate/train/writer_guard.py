"""Runs inside megatron's checkpoint-writer helper process (kept free of heavy imports: the
helper is started with ``spawn`` and imports this module).

megatron-core's ``dist_checkpointing`` writer keeps one long-lived ``multiprocessing`` manager
process for its results queue. It sits in the trainer's process group, so a signal meant for
the trainer (Slurm's ``--signal=USR1`` to the job step, ``ablate sweep cancel``'s SIGTERM to the
group, Ctrl-C) killed it, and the checkpoint that the signal asked for then failed (EOFError).
Its server ignores those signals and instead exits when the trainer is gone (a SIGKILLed
trainer leaves no orphan behind).
"""

from __future__ import annotations

import os
import signal
import threading
import time


def ignore_signals_and_follow_parent(parent_pid: int) -> None:
    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)

    def follow() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(0)
            time.sleep(1.0)

    threading.Thread(target=follow, daemon=True).start()
