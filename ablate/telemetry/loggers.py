"""Metric loggers behind one interface (torchtitan style): no-op, JSONL, TensorBoard, several.

Only rank 0 logs; other ranks get ``NoOpLogger``. ``metrics.jsonl`` is appended one complete
line per logged step and flushed, so a reader (or a resumed run) never sees half a record.
"""

from __future__ import annotations

import json
import os


class MetricLogger:
    def log(self, step: int, metrics: dict) -> None:
        ...

    def close(self) -> None:
        ...


class NoOpLogger(MetricLogger):
    pass


class JSONLLogger(MetricLogger):
    def __init__(self, path: str, truncate_after_step: int | None = None):
        self.path = path
        if truncate_after_step is not None and os.path.exists(path):
            _drop_records_after(path, truncate_after_step)
        self.f = open(path, "a", encoding="utf-8")

    def log(self, step: int, metrics: dict) -> None:
        self.f.write(json.dumps({"step": step, **metrics}) + "\n")
        self.f.flush()

    def close(self) -> None:
        self.f.close()


class TensorBoardLogger(MetricLogger):
    def __init__(self, log_dir: str, purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir, purge_step=purge_step)

    def log(self, step: int, metrics: dict) -> None:
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MultiLogger(MetricLogger):
    def __init__(self, loggers: list[MetricLogger]):
        self.loggers = loggers

    def log(self, step: int, metrics: dict) -> None:
        for lg in self.loggers:
            lg.log(step, metrics)

    def close(self) -> None:
        for lg in self.loggers:
            lg.close()


def _drop_records_after(path: str, step: int) -> None:
    """A resumed run rewrites the steps after its checkpoint: drop the old ones first."""
    from ablate.io import write_text_atomic

    with open(path, encoding="utf-8") as f:
        keep = [line for line in f if line.strip() and json.loads(line).get("step", -1) <= step]
    write_text_atomic(path, "".join(keep))
