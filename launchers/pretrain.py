"""torchrun entry point: ``torchrun --nproc-per-node N launchers/pretrain.py RECIPE [--resume]``.

Thin on purpose: it parses the command line and calls ``ablate.train.loop.train``. First, under
torchrun, the worker asks Linux for SIGTERM when its agent dies (a SIGKILLed agent otherwise
leaves its workers training on); SIGTERM is the trainer's preemption signal: it checkpoints
and exits (``ablate.train.process_group.follow_parent_under_torchrun``).
"""

import sys

from ablate.train.process_group import follow_parent_under_torchrun

if __name__ == "__main__":  # megatron-core may spawn helper processes: keep the guard
    follow_parent_under_torchrun()
    from ablate.cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
