"""The Weights & Biases logger, offline: what it logs is in the run's own transaction log."""

from __future__ import annotations

import glob
import json
import os
import struct
import subprocess
import sys

import pytest

from ablate.errors import AblateError
from ablate.telemetry.loggers import WandbLogger


def wandb_records(path: str) -> list:
    """The records of a ``run-<id>.wandb`` file: a 7-byte header (``:W&B``, magic 0xBEE1,
    version), then LevelDB log framing (32 KiB blocks; each chunk: crc32c, length, type
    full/first/middle/last) around protobuf ``Record`` messages."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = open(path, "rb").read()
    assert data[:4] == b":W&B" and struct.unpack("<H", data[4:6])[0] == 0xBEE1, data[:7]
    block, pos, parts, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0:  # zero padding to the end of the block
            pos += -pos % block
            continue
        parts = chunk if kind in (1, 2) else parts + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(parts)
            records.append(record)
    return records


def history(run_dir: str) -> list[dict]:
    (path,) = glob.glob(os.path.join(run_dir, "wandb", "offline-run-*", "run-*.wandb"))
    rows = []
    for r in wandb_records(path):
        if r.WhichOneof("record_type") == "history":
            row = {
                item.key or "/".join(item.nested_key): json.loads(item.value_json)
                for item in r.history.item
            }
            rows.append({k: v for k, v in row.items() if k not in ("_runtime", "_timestamp")})
    return rows


def config(run_dir: str) -> dict:
    (path,) = glob.glob(os.path.join(run_dir, "wandb", "offline-run-*", "run-*.wandb"))
    out = {}
    for r in wandb_records(path):
        if r.WhichOneof("record_type") in ("run", "config"):
            cfg = r.run.config if r.WhichOneof("record_type") == "run" else r.config
            out.update({item.key: json.loads(item.value_json) for item in cfg.update})
    return {k: v for k, v in out.items() if not k.startswith("_")}  # "_wandb": W&B's own


# The logging runs in a child process: W&B's service writes the run's file completely only at
# its teardown (process exit), and its stream wrapping and service stay out of pytest.
CHILD = """
import json, sys
from ablate.telemetry.loggers import JSONLLogger, MultiLogger, WandbLogger
spec = json.loads(sys.argv[1])
logger = MultiLogger([WandbLogger(dir=spec["dir"], mode="offline", **spec["init"]),
                      JSONLLogger(spec["dir"] + "/metrics.jsonl")])
for step, metrics in spec["steps"]:
    logger.log(step, metrics)
logger.close()
"""


def log_offline(tmp_path, steps, **init) -> None:
    env = {**os.environ, "WANDB_SILENT": "true", "WANDB_DISABLE_CODE": "true"}
    env.pop("WANDB_MODE", None)
    for var in (
        "WANDB_DIR",
        "WANDB_CACHE_DIR",
        "WANDB_CONFIG_DIR",
        "WANDB_DATA_DIR",
    ):  # nothing outside tmp
        env[var] = str(tmp_path)
    spec = json.dumps({"dir": str(tmp_path), "init": init, "steps": steps})
    subprocess.run([sys.executable, "-c", CHILD, spec], env=env, check=True, timeout=300)


@pytest.fixture
def offline(tmp_path):
    pytest.importorskip("wandb")
    return tmp_path


def test_logged_steps_are_in_the_offline_run(offline):
    rows = [
        {
            "loss": 2.5,
            "loss/math": 2.25,
            "tokens/math": 512,
            "lr": 1e-3,
            "stage": "code",
            "loss/code": None,
            "routing/ok": True,
        },
        {
            "loss": 2.0,
            "loss/math": 1.75,
            "tokens/math": 1024,
            "lr": 9e-4,
            "stage": "code",
            "loss/code": 1.5,
            "routing/ok": True,
        },
        {
            "loss": 1.5,
            "loss/math": 1.25,
            "tokens/math": 1536,
            "lr": 8e-4,
            "stage": "math",
            "loss/code": 1.25,
            "routing/ok": False,
        },
    ]
    log_offline(
        offline,
        list(enumerate(rows, start=1)),
        project="ablate-test",
        name="tiny",
        config={"seed": 7, "model": {"num_layers": 2}},
    )

    got = history(str(offline))
    want = [
        {
            "_step": step,
            **{
                k: v
                for k, v in m.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)
            },
        }
        for step, m in enumerate(rows, start=1)
    ]
    assert got == want  # numbers only (strings, None and flags left out), exactly, at their step
    assert config(str(offline)) == {"seed": 7, "model": {"num_layers": 2}}
    jsonl = [json.loads(line) for line in open(offline / "metrics.jsonl")]
    assert [r["loss"] for r in jsonl] == [r["loss"] for r in got]


def test_a_replayed_step_keeps_its_first_value(offline):
    """What the docstring tells a resumed run: W&B keeps only steps later than all it has."""
    log_offline(
        offline,
        [(1, {"loss": 3.0}), (2, {"loss": 2.0}), (1, {"loss": 9.0}), (3, {"loss": 1.0})],
        project="ablate-test",
    )
    assert [(r["_step"], r["loss"]) for r in history(str(offline))] == [
        (1, 3.0),
        (2, 2.0),
        (3, 1.0),
    ]


def test_missing_package_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    with pytest.raises(AblateError) as e:
        WandbLogger("p", dir=str(tmp_path))
    assert "pip install" in str(e.value) and "\n" not in str(e.value)
