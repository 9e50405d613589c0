"""torchrun entry point: ``torchrun --nproc-per-node N launchers/pretrain.py RECIPE [--resume auto]``.

Thin on purpose: it parses the command line and calls ``ablate.train.loop.train``.
"""

import sys

from ablate.cli import main

if __name__ == "__main__":  # megatron-core may spawn helper processes: keep the guard
    sys.exit(main(["train", *sys.argv[1:]]))
