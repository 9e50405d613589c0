"""Metric loggers behind one interface (torchtitan style): no-op, JSONL, TensorBoard, Weights &
Biases, several.

Only rank 0 logs; other ranks get ``NoOpLogger``. ``metrics.jsonl`` is appended one complete
line per logged step and flushed, so a reader (or a resumed run) never sees half a record.
"""

from __future__ import annotations

import json
import os


class MetricLogger:
    def log(self, step: int, metrics: dict) -> None: ...

    def close(self) -> None: ...


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


class WandbLogger(MetricLogger):
    """Weights & Biases (the optional extra ``wandb``): numeric metrics at W&B step ``step``.

    ``dir`` holds W&B's files (``dir/wandb/...``; e.g. the run directory). ``mode`` is W&B's:
    "online", "offline" (nothing leaves the machine; ``wandb sync`` uploads later) or
    "disabled"; None lets ``WANDB_MODE`` decide. ``config`` (e.g. the resolved recipe) is stored
    with the run. A resumed training run passes the same ``run_id`` with ``resume=True`` to
    continue one W&B run; W&B keeps a step only if it is later than every step it has, so the
    steps replayed after a checkpoint keep the values the first attempt logged. Any other
    ``wandb.init`` argument (``settings``, ``notes``, ...) passes through ``init_kwargs``.
    ``close()`` finishes the run, but W&B's service (wandb 0.31) completes the run's files only
    at its teardown: at process exit, or ``wandb.teardown()``.
    """

    def __init__(
        self,
        project: str,
        name: str | None = None,
        *,
        dir: str,
        config: dict | None = None,
        mode: str | None = None,
        entity: str | None = None,
        group: str | None = None,
        tags: list[str] | None = None,
        run_id: str | None = None,
        resume: bool = False,
        **init_kwargs,
    ):
        try:
            import wandb
        except ImportError:
            from ablate.errors import AblateError

            raise AblateError(
                "Weights & Biases logging needs the wandb package: pip install 'ablate[wandb]' "
                "(or pip install wandb)"
            ) from None
        os.makedirs(dir, exist_ok=True)
        self.run = wandb.init(
            project=project,
            name=name,
            dir=dir,
            config=config,
            mode=mode,
            entity=entity,
            group=group,
            tags=tags,
            id=run_id,
            resume="allow" if resume else None,
            reinit="create_new",
            **init_kwargs,
        )

    def log(self, step: int, metrics: dict) -> None:
        numbers = {
            k: v
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        self.run.log(numbers, step=step)

    def close(self) -> None:
        self.run.finish()


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
