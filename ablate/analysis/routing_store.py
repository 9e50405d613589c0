"""Routing logs on disk: the per-flush files training writes, consolidated into one columnar file.

Training writes ``runs/<name>/routing/step_%08d.npz`` every flush (counts of the window since the
previous flush). Reading hundreds of small files per run is what makes analysis slow, so the
first read stacks them into ``runs/<name>/routing_columnar.npz``:

    steps_F [F] int64, count_FLDE [F, L, D, E] int32 (int64 if needed), ntok_FLD [F, L, D],
    gate_FLDE [F, L, D, E] float32, expert_bias_FLE (if logged), domains [D], files (JSON: name,
    size, mtime of every flush file it was built from)

an uncompressed ``.npz`` (plain ``np.load`` reads it) whose members this module memory-maps, so
loading a run costs a few page faults, not a parse. It is rebuilt when the flush files change,
extended when new ones appear (a run still training), and written atomically. The counts come
from float32 accumulators on the device, so float32 gates and int32 counts lose nothing.

The store is a cache, and its run directory is someone's input, so writing it follows two rules:
it never makes a read fail (a run directory that cannot be written -- read-only, full, someone
else's -- is one warning line per process, and the arrays are used from memory), and inside
``cache_writes_after_success()`` nothing is written until the block has succeeded (``ablate
report`` wraps itself in it: a report that fails leaves its input run directories as they were).

Eval-time routing (``eval/routing_step_<N>.npz``, written by ``ablate eval``) is small and read
as is (``load_eval_routing``).

(Over 400 lines: the store's reader, writer, freshness rules and memory-mapping are one file
format and change together.)
"""

from __future__ import annotations

import glob
import json
import os
import re
import struct
import sys
import time
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from ablate.errors import AblateError
from ablate.io import os_error_line, remove_stale_temporaries

COLUMNAR = "routing_columnar.npz"  # in the run directory, beside routing/
# when the store was last found up to date (a hint: ignored if inconsistent)
HINT = "routing_columnar.json"
_SETTLE_NS = (
    2_000_000_000  # a directory mtime this much older than our check cannot hide a later write
)
FORMAT = "ablate.routing-columnar/1"
_STEP = re.compile(r"step_(\d+)\.npz$")


@dataclass
class RoutingLog:
    """One run's training-time routing, every flush window stacked (``F`` windows)."""

    run: str
    steps_F: np.ndarray
    domains: list
    count_FLDE: np.ndarray  # window counts, not cumulative; may be a read-only memory map
    ntok_FLD: np.ndarray
    gate_FLDE: np.ndarray
    expert_bias_FLE: np.ndarray | None
    k: int | None = None

    @property
    def shape(self) -> tuple:
        return self.count_FLDE.shape

    @property
    def num_layers(self) -> int:
        return self.count_FLDE.shape[1]

    @property
    def num_experts(self) -> int:
        return self.count_FLDE.shape[3]

    def total(self) -> tuple[np.ndarray, np.ndarray]:
        """``(count_LDE, ntok_LD)`` summed over every flush: the whole run's routing."""
        return self.count_FLDE.sum(0, dtype=np.int64), self.ntok_FLD.sum(0, dtype=np.int64)

    def metrics(self, cumulative: bool = False, **kwargs):
        """Every training-time metric per flush (``routing_metrics.routing_metrics``)."""
        from ablate.analysis.routing_metrics import routing_metrics

        return routing_metrics(
            self.count_FLDE,
            self.ntok_FLD,
            self._k(),
            steps_F=self.steps_F,
            domains=self.domains,
            cumulative=cumulative,
            **kwargs,
        )

    def select_domains(self, domains) -> "RoutingLog":
        """The same log restricted to (and ordered as) ``domains``."""
        missing = [d for d in domains if d not in self.domains]
        if missing:
            raise AblateError(
                f"{self.run}: routing has no domain {', '.join(missing)} (it has "
                f"{', '.join(self.domains)})"
            )
        idx = [self.domains.index(d) for d in domains]
        return RoutingLog(
            self.run,
            self.steps_F,
            list(domains),
            self.count_FLDE[:, :, idx],
            self.ntok_FLD[:, :, idx],
            self.gate_FLDE[:, :, idx],
            self.expert_bias_FLE,
            self.k,
        )

    def _k(self) -> int:
        if not self.k:
            raise AblateError(
                f"{self.run}: the router's top-k is unknown (load the log through its run)"
            )
        return self.k


# ------------------------------------------------------------------ consolidation


def flush_files(run_dir: str) -> list[tuple[int, str]]:
    """``[(step, path)]`` of a run's flush files, by step."""
    out = []
    for path in glob.glob(os.path.join(run_dir, "routing", "step_*.npz")):
        m = _STEP.search(os.path.basename(path))
        if m:
            out.append((int(m.group(1)), path))
    return sorted(out)


def _signature(files) -> list:
    sig = []
    for _, path in files:
        st = os.stat(path)
        sig.append([os.path.basename(path), st.st_size, st.st_mtime_ns])
    return sig


def load_routing(
    run_dir: str, k: int | None = None, cache: bool = True, refresh: bool = True
) -> RoutingLog:
    """A run's training routing, from ``<run>/routing_columnar.npz`` (built or refreshed first).

    Freshness: flush files are written by rename, which changes the mtime of ``routing/``; when
    that mtime is what it was at the last check (and was already settled then), the store is
    used without listing the flush files; otherwise every flush file's name, size and mtime are
    compared with the store's record, and the store is extended or rebuilt as needed.

    ``k`` (the recipe's ``model.moe_router_topk``) also checks every window's
    ``count.sum(-1) == k * ntok``. With ``cache=False`` nothing is written (a read-only run dir
    falls back to that by itself). ``refresh=False`` takes an existing store as it is, without
    comparing it with the flush files (an archived run whose flush files were deleted).
    """
    name = run_dir.rstrip("/")
    path = os.path.join(run_dir, COLUMNAR)
    routing_dir = os.path.join(run_dir, "routing")
    dir_mtime = os.stat(routing_dir).st_mtime_ns if os.path.isdir(routing_dir) else None
    if os.path.exists(path) and (not refresh or _hint_says_fresh(run_dir, path, dir_mtime)):
        stored = _read_columnar(path)
        if stored is not None:
            return _log(name, stored, k)
    files = flush_files(run_dir)
    if not files:
        raise AblateError(
            f"{name}: no routing/step_*.npz (training writes one every cadence.routing_flush_every "
            "steps; "
            f"a dense model has none)"
        )
    sig = _signature(files)
    cached = _read_columnar(path) if os.path.exists(path) else None
    if cached is not None and cached["files"] == sig:
        arrays = cached
        if cache:
            _save(run_dir, path, dir_mtime, None)
    else:
        start = 0
        if cached is not None and cached["files"] == sig[: len(cached["files"])]:
            start = len(cached["files"])  # an extension: only the new windows are read
        new = _stack(name, files[start:], k)
        if start:
            _check_same_layout(name, cached, new, files[start][1])
            arrays = {
                key: np.concatenate([cached[key], new[key]])
                for key in ("steps_F", "count_FLDE", "ntok_FLD", "gate_FLDE")
            }
            arrays["domains"] = cached["domains"]
            arrays["expert_bias_FLE"] = (
                np.concatenate([cached["expert_bias_FLE"], new["expert_bias_FLE"]])
                if cached["expert_bias_FLE"] is not None and new["expert_bias_FLE"] is not None
                else None
            )
        else:
            arrays = new
        arrays["count_FLDE"] = _narrow(arrays["count_FLDE"])
        arrays["ntok_FLD"] = _narrow(arrays["ntok_FLD"])
        arrays["files"] = sig
        if cache and _save(run_dir, path, dir_mtime, arrays):
            arrays = _read_columnar(path) or arrays  # memory-mapped from the store
    return _log(name, arrays, k)


# pending cache writes while a cache_writes_after_success() block runs (None: write at once)
_DEFERRED: list[Callable[[], bool]] | None = None
_WARNED = False


@contextmanager
def cache_writes_after_success() -> Iterator[None]:
    """Hold back the stores ``load_routing`` writes until the block has succeeded; an exception
    discards them, so a failed command leaves the run directories it read untouched."""
    global _DEFERRED
    outer = _DEFERRED
    pending: list[Callable[[], bool]] = [] if outer is None else outer
    _DEFERRED = pending
    try:
        yield
    finally:
        _DEFERRED = outer
    if outer is None:  # reached only when the block raised nothing
        for write in pending:
            write()


def _save(run_dir: str, path: str, dir_mtime, arrays: dict | None) -> bool:
    """Write the store (``arrays``; None: only the freshness hint) now, or once the enclosing
    ``cache_writes_after_success`` block has succeeded; whether it was written now."""

    def write() -> bool:
        try:
            if arrays is not None:
                remove_stale_temporaries(run_dir)  # a killed reader's half-written store
                write_columnar(path, arrays)
            _write_hint(run_dir, path, dir_mtime)
            return True
        except (OSError, AblateError) as exc:  # a cache: never a reason to fail
            _warn_once(os_error_line(path, exc) if isinstance(exc, OSError) else str(exc))
            return False

    if _DEFERRED is not None:
        _DEFERRED.append(write)
        return False
    return write()


def _warn_once(line: str) -> None:
    global _WARNED
    if not _WARNED:
        _WARNED = True
        print(f"warning: {line}; routing caches are kept in memory (warned once)", file=sys.stderr)


def _log(name, arrays, k) -> RoutingLog:
    return RoutingLog(
        name,
        arrays["steps_F"],
        list(arrays["domains"]),
        arrays["count_FLDE"],
        arrays["ntok_FLD"],
        arrays["gate_FLDE"],
        arrays["expert_bias_FLE"],
        k,
    )


def _hint_says_fresh(run_dir: str, path: str, dir_mtime) -> bool:
    try:
        with open(os.path.join(run_dir, HINT)) as f:
            hint = json.load(f)
        return (
            dir_mtime is not None
            and hint["dir_mtime_ns"] == dir_mtime
            and hint["store_mtime_ns"] == os.stat(path).st_mtime_ns
            and hint["checked_ns"] - dir_mtime > _SETTLE_NS
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _write_hint(run_dir: str, path: str, dir_mtime) -> None:
    """Record that the store matched the flush files when ``routing/`` had ``dir_mtime`` (taken
    before the files were listed, so a flush landing meanwhile changes it)."""
    from ablate.io import write_json_atomic

    if dir_mtime is None:
        return
    write_json_atomic(
        os.path.join(run_dir, HINT),
        {
            "dir_mtime_ns": dir_mtime,
            "checked_ns": time.time_ns(),
            "store_mtime_ns": os.stat(path).st_mtime_ns,
        },
    )


def _narrow(a: np.ndarray) -> np.ndarray:
    if a.dtype != np.int32 and (a.size == 0 or (a.min() >= 0 and a.max() < 2**31)):
        return a.astype(np.int32)
    return a


def _stack(name: str, files, k: int | None) -> dict:
    steps, counts, ntoks, gates, biases, domains = [], [], [], [], [], None
    for step, path in files:
        try:
            with np.load(path, allow_pickle=False) as z:
                missing = [
                    key for key in ("count", "gate", "ntok", "domains") if key not in z.files
                ]
                if missing:
                    raise AblateError(f"{path}: not a routing flush (missing {', '.join(missing)})")
                count, gate, ntok, doms = (
                    z["count"],
                    z["gate"],
                    z["ntok"],
                    [str(d) for d in z["domains"]],
                )
                bias = z["expert_bias"] if "expert_bias" in z.files else None
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise AblateError(f"{path}: unreadable routing flush ({exc})") from None
        if (
            count.ndim != 3
            or gate.shape != count.shape
            or ntok.shape != count.shape[:2]
            or len(doms) != count.shape[1]
        ):
            raise AblateError(
                f"{path}: inconsistent shapes: count {count.shape}, gate {gate.shape}, ntok "
                f"{ntok.shape}, "
                f"{len(doms)} domains (expected [L, D, E], [L, D, E], [L, D], D)"
            )
        if domains is None:
            domains, shape = doms, count.shape
        elif doms != domains or count.shape != shape:
            raise AblateError(
                f"{path}: domains {doms} / shape {count.shape} differ from the run's earlier "
                "flushes "
                f"({domains} / {shape})"
            )
        if k and not np.array_equal(count.sum(-1), k * ntok):
            raise AblateError(
                f"{path}: counts do not sum to top-k ({k}) x tokens; is model.moe_router_topk "
                "right?"
            )
        steps.append(step)
        counts.append(count)
        ntoks.append(ntok)
        gates.append(gate.astype(np.float32))
        biases.append(bias)
    L, D, E = shape if domains is not None else (0, 0, 0)
    have_bias = bool(biases) and all(b is not None for b in biases)
    return {
        "steps_F": np.array(steps, np.int64),
        "count_FLDE": np.stack(counts) if counts else np.zeros((0, L, D, E), np.int64),
        "ntok_FLD": np.stack(ntoks) if ntoks else np.zeros((0, L, D), np.int64),
        "gate_FLDE": np.stack(gates) if gates else np.zeros((0, L, D, E), np.float32),
        "expert_bias_FLE": np.stack(biases).astype(np.float32) if have_bias else None,
        "domains": domains or [],
    }


def _check_same_layout(name, cached, new, first_new):
    if (
        list(new["domains"]) != list(cached["domains"])
        or new["count_FLDE"].shape[1:] != cached["count_FLDE"].shape[1:]
    ):
        raise AblateError(f"{first_new}: domains or shape differ from the run's earlier flushes")


def write_columnar(path: str, arrays: dict) -> None:
    """Write the consolidated store (atomically; uncompressed so it can be memory-mapped)."""
    from ablate.io import atomic_path

    body = {key: arrays[key] for key in ("steps_F", "count_FLDE", "ntok_FLD", "gate_FLDE")}
    body["domains"] = np.array(list(arrays["domains"]), dtype=str)
    body["files"] = np.array(json.dumps(arrays["files"]))
    body["format"] = np.array(FORMAT)
    if arrays.get("expert_bias_FLE") is not None:
        body["expert_bias_FLE"] = arrays["expert_bias_FLE"]
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **body)


def _read_columnar(path: str) -> dict | None:
    """The store's arrays (big ones memory-mapped), or None if it is not a valid store."""
    try:
        members = _npz_members(path)
        if str(members["format"][()]) != FORMAT:
            return None
        return {
            "steps_F": np.asarray(members["steps_F"]),
            "count_FLDE": members["count_FLDE"],
            "ntok_FLD": np.asarray(members["ntok_FLD"]),
            "gate_FLDE": members["gate_FLDE"],
            "expert_bias_FLE": members.get("expert_bias_FLE"),
            "domains": [str(d) for d in members["domains"]],
            "files": json.loads(str(members["files"][()])),
        }
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, struct.error, json.JSONDecodeError):
        return None


def _npz_members(path: str) -> dict:
    """Members of an uncompressed ``.npz`` as read-only memory maps (small ones read)."""
    out = {}
    with zipfile.ZipFile(path) as zf, open(path, "rb") as f:
        for info in zf.infolist():
            key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            if info.compress_type != zipfile.ZIP_STORED:
                out[key] = np.load(zf.open(info), allow_pickle=False)
                continue
            f.seek(info.header_offset)
            local = f.read(30)
            if local[:4] != b"PK\x03\x04":
                raise ValueError("bad zip local header")
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            f.seek(info.header_offset + 30 + name_len + extra_len)
            version = np.lib.format.read_magic(f)
            reader = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = reader(f)
            if dtype.hasobject:
                raise ValueError("object arrays are not expected")
            offset = f.tell()
            if int(np.prod(shape)) * dtype.itemsize < (1 << 16):
                f.seek(offset)
                a = np.frombuffer(f.read(int(np.prod(shape)) * dtype.itemsize), dtype=dtype)
                out[key] = a.reshape(shape, order="F" if fortran else "C")
            else:
                out[key] = np.memmap(
                    path,
                    dtype=dtype,
                    mode="r",
                    offset=offset,
                    shape=shape,
                    order="F" if fortran else "C",
                )
    return out


# ------------------------------------------------------------------ eval-time routing


@dataclass
class EvalRouting:
    """Top-k expert ids of every held-out probe token at one checkpoint."""

    path: str
    step: int
    domains: list
    topk_TKL: np.ndarray
    token_ids_T: np.ndarray
    domain_T: np.ndarray

    @property
    def k(self) -> int:
        return self.topk_TKL.shape[1]

    @property
    def num_layers(self) -> int:
        return self.topk_TKL.shape[2]

    def select(self, domain: str | None) -> "EvalRouting":
        if domain is None:
            return self
        if domain not in self.domains:
            raise AblateError(
                f"{self.path}: no eval routing for domain {domain!r} (it has "
                f"{', '.join(self.domains)})"
            )
        keep = self.domain_T == self.domains.index(domain)
        return EvalRouting(
            self.path,
            self.step,
            self.domains,
            self.topk_TKL[keep],
            self.token_ids_T[keep],
            self.domain_T[keep],
        )


_EVAL_ROUTING = re.compile(r"routing_step_(\d+)\.npz$")


def eval_routing_steps(run_dir: str) -> list[int]:
    return sorted(
        int(m.group(1))
        for p in glob.glob(os.path.join(run_dir, "eval", "routing_step_*.npz"))
        if (m := _EVAL_ROUTING.search(os.path.basename(p)))
    )


def load_eval_routing(
    run_dir: str, step: int | None = None, num_experts: int | None = None
) -> EvalRouting:
    """``eval/routing_step_<N>.npz`` (the latest step by default)."""
    steps = eval_routing_steps(run_dir)
    if not steps:
        raise AblateError(
            f"{run_dir.rstrip('/')}: no eval/routing_step_*.npz (run 'ablate eval' on it)"
        )
    step = steps[-1] if step is None else step
    path = os.path.join(run_dir, "eval", f"routing_step_{step}.npz")
    if not os.path.exists(path):
        raise AblateError(
            f"{path}: no eval routing at step {step} (steps: {', '.join(map(str, steps))})"
        )
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [
                key
                for key in ("topk_TKL", "token_ids_T", "domain_T", "domains")
                if key not in z.files
            ]
            if missing:
                raise AblateError(
                    f"{path}: not an eval routing file (missing {', '.join(missing)})"
                )
            topk, ids, dom, doms = (
                z["topk_TKL"],
                z["token_ids_T"],
                z["domain_T"],
                [str(d) for d in z["domains"]],
            )
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise AblateError(f"{path}: unreadable eval routing ({exc})") from None
    T = topk.shape[0] if topk.ndim == 3 else -1
    if topk.ndim != 3 or ids.shape != (T,) or dom.shape != (T,):
        raise AblateError(
            f"{path}: inconsistent shapes: topk_TKL {topk.shape}, token_ids_T {ids.shape}, "
            f"domain_T {dom.shape}"
        )
    if T and (dom.min() < 0 or dom.max() >= len(doms)):
        raise AblateError(f"{path}: domain_T has ids outside the {len(doms)} domains")
    if T and num_experts and (topk.min() < 0 or topk.max() >= num_experts):
        raise AblateError(f"{path}: expert ids outside 0..{num_experts - 1}")
    return EvalRouting(path, step, doms, topk, ids, dom)
