"""Time of ``ablate compile`` against stock megatron-core's dataset builder, in one run.

Run (defaults: 64 datasets holding 32B tokens, sequence length 4096, 16 mixtures; then the
scale recipe, 512 datasets and a 1T-token budget):

    python benchmarks/compile.py --skip-scale     # measurements 1-2: ~40 compiles, ~2 min
    python benchmarks/compile.py                  # + scale: estimated 20+ min on 2 cores

At full size the scale part writes ~13 GB of .idx (kept for the next run) and ~10 GB of
indices (removed) under --workdir. (Its blend was most of its time while ablate used
megatron-core's greedy blend, 244M samples x 512 datasets at ~6 ns each; ablate's own blend
is O(samples).)

Smoke test (well under a minute):

    python benchmarks/compile.py --datasets 8 --tokens 50M --points 4 --repeat 1 \
        --scale-datasets 16 --scale-tokens 200M

Three measurements, all on synthetic manifests (below):

1. **single**: one recipe compiled from an empty cache by ``compile_recipe`` (plan, quick
   manifest check, per-dataset indices, the blend, plan.json) against stock megatron-core's
   ``BlendedMegatronDatasetBuilder(GPTDataset, ...)`` building the same blend (same datasets,
   same per-dataset sample shares, same total) into an empty ``path_to_cache``. Best of
   --repeat, each side alternately first. Target: ours <= 1.1x stock.
2. **sweep**: --points mixtures over the same datasets (the share of ``code`` from 0.05 to
   0.80, the rest split between math and general as in the base recipe), compiled one after
   the other into ONE cache per side, starting empty. Stock keys each dataset's indices by its
   sample count, so every mixture rebuilds them; ours keys them by content, so later mixtures
   reuse them. Target: ours total <= 2x ours single (stock: ~points x). Each of ours runs as a
   fresh ``ablate compile`` process would (nothing kept open from the compile before).
   **2b**: the same mixtures as one sweep file, ``ablate sweep expand`` timed whole in one
   process: every point planned, run directories written, each dataset's indices built once at
   the longest length any point needs, every blend (computed in the background meanwhile).
   Best of --repeat, each from an empty cache, as measurement 1 (the same statistic both sides).
3. **scale**: a --scale-datasets, --scale-tokens recipe (budget; the datasets hold 1.25x that,
   so the recipe reads ~0.8 epoch of each) compiled by the real CLI, ``ablate compile
   recipe.yaml``, in a subprocess from an empty cache; wall time and that process's peak RSS.

After measurement 2 it reports the sweep's later mixtures (median, max) and times, alone, what
each ``ablate compile`` pays again even with every index cached: the manifest's quick .idx check
(memoized by file stat after the first compile) and the blend's interleaving (stock's greedy
blend and its tokenizer load beside them, for scale). Writing the blend (~10 bytes a sample)
and plan.json comes on top.

Figures to quote are the ratios: both sides run on the same machine in the same minute, so
machine noise mostly cancels. Raw seconds are for scale only.

Synthetic data: megatron-format ``.idx`` files written directly with numpy (megatron's
``_IndexWriter`` loops in Python over every sequence: hours at 1T tokens), documents of
lognormal length (mean ~1500 tokens, clipped to [16, 32768]); the ``.bin`` is a sparse file of
the right size, since building indices never reads token data. The tokenizer is a real
``tokenizer.json`` (a 100k-entry word-level vocabulary, eod id 0, pad id 1) so the manifest's
``hf`` tokenizer loads as it would for real data, and tokens are int32 as for any vocabulary
over 65k. Data is generated once per (datasets, tokens, seed) and kept under --workdir.

(About 730 lines: one harness, three measurements that share the synthetic manifests, the
stock-builder side and the timing rules; splitting it would make each part unreadable alone.)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np

# The taxonomy's leaves, in a cycle that gives general, code and math a third of the datasets
# each, so that one group's share can swing widely without any dataset running out of epochs.
DOMAIN_CYCLE = [
    "general",
    "code.exec",
    "math.text",
    "general",
    "code.nl",
    "math.structured",
    "general",
    "code.exec",
    "math.code",
]
# The base mixture (measurement 1); the sweep moves `code` and keeps math:general at 3:4.
BASE_CODE, BASE_MATH, BASE_GENERAL = 0.30, 0.30, 0.40
SWEEP_LOW, SWEEP_HIGH = 0.05, 0.80
SCALE_DATA_FACTOR = 1.25  # scale datasets hold this many times the recipe's budget
DOC_MEAN, DOC_SIGMA, DOC_MIN, DOC_MAX = 1500, 1.0, 16, 32768
VOCAB, EOD, PAD = 100_000, 0, 1


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- synthetic manifests --------------------------------------------------------------------


def document_lengths(rng: np.random.Generator, tokens: int) -> np.ndarray:
    """Lognormal document lengths summing to at least ``tokens`` (the last one is trimmed)."""
    mu = math.log(DOC_MEAN) - DOC_SIGMA**2 / 2  # so the unclipped mean is DOC_MEAN
    parts, total = [], 0
    while total < tokens:
        n = int((tokens - total) / DOC_MEAN * 1.1) + 16
        x = np.clip(rng.lognormal(mu, DOC_SIGMA, n), DOC_MIN, DOC_MAX).astype(np.int32)
        parts.append(x)
        total += int(x.sum(dtype=np.int64))
    lengths = np.concatenate(parts)
    ends = np.cumsum(lengths, dtype=np.int64)
    cut = int(np.searchsorted(ends, tokens)) + 1  # first document that reaches `tokens`
    lengths = lengths[:cut]
    lengths[-1] -= int(ends[cut - 1] - tokens)  # exact total; the trimmed last doc stays >= 1
    return lengths


def write_idx(path: str, lengths: np.ndarray) -> str:
    """megatron-core's ``.idx`` format (see ``_IndexWriter``), int32 tokens; returns its sha256."""
    from megatron.core.datasets.indexed_dataset import _INDEX_HEADER, DType

    n = len(lengths)
    pointers = np.zeros(n, dtype=np.int64)
    np.cumsum(lengths[:-1].astype(np.int64) * 4, out=pointers[1:])  # byte offset of each sequence
    chunks = [
        _INDEX_HEADER
        + struct.pack("<Q", 1)
        + struct.pack("<B", DType.code_from_dtype(np.int32))
        + struct.pack("<Q", n)
        + struct.pack("<Q", n + 1),
        lengths.astype(np.int32).tobytes(),
        pointers.tobytes(),
        np.arange(n + 1, dtype=np.int64).tobytes(),  # one sequence per document
    ]
    h = hashlib.sha256()  # hash while writing: no second pass over ~10 GB at full scale
    with open(path, "wb") as f:
        for c in chunks:
            f.write(c)
            h.update(c)
    return h.hexdigest()


def make_synthetic(root: str, datasets: int, tokens: int, seed: int) -> str:
    """A data directory with ``datasets`` datasets of ``tokens`` tokens in all; its manifest path.

    Kept and reused: the manifest is written last, so its presence means the data is complete.
    """
    manifest = os.path.join(root, "manifest.json")
    if os.path.exists(manifest):
        return manifest
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    os.makedirs(root, exist_ok=True)
    vocab = {
        "<|endoftext|>": EOD,
        "<pad>": PAD,
        "<unk>": 2,
        **{f"t{i}": i for i in range(3, VOCAB)},
    }
    tok_path = os.path.join(root, "tokenizer.json")
    Tokenizer(WordLevel(vocab, unk_token="<unk>")).save(tok_path)
    with open(tok_path, "rb") as f:
        tok_fp = "hf-" + hashlib.sha256(f.read()).hexdigest()[:16]  # what HFTokenizer computes

    rng = np.random.default_rng(seed)
    # Datasets differ in size as real sources do (lognormal, ~x1.6 spread), summing to `tokens`.
    w = rng.lognormal(0.0, 0.5, datasets)
    sizes = np.floor(w / w.sum() * tokens).astype(np.int64)
    sizes[0] += tokens - sizes.sum()
    entries, t0 = [], time.perf_counter()
    for i, size in enumerate(sizes):
        prefix = f"syn{i:04d}"
        lengths = document_lengths(np.random.default_rng([seed, i]), int(size))
        idx_sha = write_idx(os.path.join(root, prefix + ".idx"), lengths)
        with open(os.path.join(root, prefix + ".bin"), "wb") as f:
            f.truncate(int(size) * 4)  # sparse: the right size, no disk used
        entries.append(
            {
                "domain": DOMAIN_CYCLE[i % len(DOMAIN_CYCLE)],
                "prefix": prefix,
                "source": prefix,
                "split": "train",
                "documents": int(len(lengths)),
                "tokens": int(size),
                "bytes": int(size) * 4,
                "dtype": "int32",
                "tokenizer": tok_fp,
                "fingerprint": "synthetic-" + idx_sha[:32],
                "index_sha256": idx_sha,
            }
        )
        if (i + 1) % 64 == 0 or i + 1 == datasets:
            log(f"  data: {i + 1}/{datasets} datasets written ({time.perf_counter() - t0:.0f}s)")
    body = {
        "format": "ablate.manifest/1",
        "tokenizer": {
            "kind": "hf",
            "path": "tokenizer.json",
            "fingerprint": tok_fp,
            "vocab_size": VOCAB,
            "eod": EOD,
            "pad": PAD,
        },
        "seed": seed,
        "domains": [],
        "datasets": entries,
        "eval_datasets": [],
        "probes": {},
        "spec": {"synthetic": True},
        "inputs": {},
    }
    with open(manifest + ".tmp", "w") as f:
        json.dump(body, f, indent=1)
    os.replace(manifest + ".tmp", manifest)
    return manifest


def check_roundtrip(manifest: str, seed: int) -> None:
    """megatron-core's own reader must see exactly the document lengths we wrote."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    with open(manifest) as f:
        first = json.load(f)["datasets"][0]
    want = document_lengths(np.random.default_rng([seed, 0]), first["tokens"])
    ds = IndexedDataset(os.path.join(os.path.dirname(manifest), first["prefix"]), mmap=True)
    assert np.array_equal(ds.sequence_lengths, want), "megatron reads back other sequence lengths"
    assert ds.index.dtype == np.int32 and len(ds) == first["documents"]


# --- the two compilers ----------------------------------------------------------------------


def mix(code: float, math_share: float) -> dict:
    """A stage mix over the three top-level groups; shares rounded, summing to exactly 1."""
    code, math_share = round(code, 6), round(math_share, 6)
    return {"code": code, "math": math_share, "general": round(1 - code - math_share, 6)}


def sweep_mix(code: float) -> dict:
    """``code`` of the budget to code, the rest to math:general at the base recipe's 3:4."""
    return mix(code, (1 - code) * BASE_MATH / (BASE_MATH + BASE_GENERAL))


def recipe_dict(
    name: str,
    manifest: str,
    cache: str,
    run_dir: str,
    seq: int,
    gbs: int,
    stage_tokens: int,
    stage_mix: dict,
) -> dict:
    """A one-stage recipe, as ``parse_recipe`` takes it (the dict form of a recipe YAML)."""
    return {
        "name": name,
        "seed": 1234,
        "run_dir": run_dir,
        "data": {"manifests": [manifest], "cache_dir": cache},
        "model": {"max_position_embeddings": seq},
        "training": {"seq_length": seq, "global_batch_size": gbs, "micro_batch_size": 1},
        "stages": [{"name": "mixed", "tokens": int(stage_tokens), "mix": stage_mix}],
    }


def run_ours(raw: dict) -> tuple[float, object]:
    """``compile_recipe`` as a fresh ``ablate compile`` process runs it (nothing already open in
    this process is reused): everything it does is timed."""
    from ablate.recipe.compile import compile_recipe
    from ablate.recipe.indices import forget_opened
    from ablate.recipe.schema import parse_recipe

    recipe = parse_recipe(raw, origin=raw["name"])
    forget_opened()
    t0 = time.perf_counter()
    plan, _ = compile_recipe(recipe)
    return time.perf_counter() - t0, plan


def run_sweep(raws: list[dict], root: str) -> tuple[float, list]:
    """``ablate sweep expand`` on a sweep file holding these mixtures (the first as its base,
    the mix shares zipped): expansion, planning, the run directories, the datasets' file check,
    each dataset's indices once at the longest length any point needs, every blend (in the
    background meanwhile) and plan.json. Timed whole, in this process, as a fresh one would
    run it; returns the seconds and the expanded points."""
    from ablate.recipe.indices import forget_opened
    from ablate.sweep.commands import expand
    from ablate.sweep.spec import load_sweep

    groups = ("code", "math", "general")
    sweep = {
        "name": "bench",
        "base": raws[0],
        "root": root,
        "point_name": "p{index:03d}",
        "zip": {
            f"stages.mixed.mix.{g}.share": [raw["stages"][0]["mix"][g] for raw in raws]
            for g in groups
        },
    }
    path = os.path.join(root + ".yaml")
    with open(path, "w") as f:
        json.dump(sweep, f, indent=1)  # JSON is YAML
    forget_opened()
    t0 = time.perf_counter()
    points = expand(load_sweep(path), log=lambda m: None)
    seconds = time.perf_counter() - t0
    assert len(points) == len(raws)
    return seconds, points


def run_stock(plan, cache: str) -> tuple[float, object]:
    """Stock megatron-core on the plan's blend, as Megatron-LM's pretrain_gpt builds it.

    The plan only supplies the inputs (prefixes, per-dataset sample shares, total samples),
    untimed; the timed part is the tokenizer load (ours loads it inside compile too) and the
    builder with megatron-core's defaults (one builder thread, 0.5% mid-level surplus).
    """
    from megatron.core.datasets.blended_megatron_dataset_builder import (
        BlendedMegatronDatasetBuilder,
    )
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    from ablate.data.tokenizer import load_tokenizer

    (stage,) = plan.stages
    prefixes = [d.path for d in stage.datasets]
    weights = [float(d.samples) for d in stage.datasets]
    t0 = time.perf_counter()
    tokenizer = load_tokenizer(plan.tokenizer, os.path.dirname(plan.manifests[0]))
    config = GPTDatasetConfig(
        random_seed=plan.seed,
        sequence_length=plan.seq_length,
        blend=(prefixes, weights),
        split="100,0,0",
        path_to_cache=cache,
        tokenizer=tokenizer,
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=False,
    )
    train, _, _ = BlendedMegatronDatasetBuilder(
        GPTDataset, [stage.samples, 0, 0], lambda: True, config
    ).build()
    seconds = time.perf_counter() - t0
    # Correctness guard, untimed: both sides must have compiled the same mixture. Stock rounds
    # each dataset's share up (ceil), so it may draw one sample more per dataset.
    got = np.bincount(np.asarray(train.dataset_index), minlength=len(prefixes))
    assert np.all(np.abs(got - np.array([d.samples for d in stage.datasets])) <= 1), (
        "stock built another mixture"
    )
    return seconds, train


def fixed_costs(plan) -> dict:
    """Untimed diagnostics: what every ``ablate compile`` pays again even when all indices are
    cached.

    Each is timed alone on the plan: the tokenizer load, the quick manifest check (sha256 of
    every used .idx), and the blend's interleaving. Ours is ``ablate.recipe.blend.blend_order``
    (WF2Q by domain, then by dataset, O(samples)); stock's is megatron-core's
    ``build_blending_indices``, which visits every dataset for every sample (O(samples x datasets)).
    """
    from megatron.core.datasets import helpers

    from ablate.data.manifest import load_manifest
    from ablate.data.tokenizer import load_tokenizer
    from ablate.recipe.blend import blend_order

    out = {}
    t0 = time.perf_counter()
    load_tokenizer(plan.tokenizer, os.path.dirname(plan.manifests[0]))
    out["tokenizer"] = time.perf_counter() - t0
    m = load_manifest(plan.manifests[0])
    used = {d.prefix for s in plan.stages for d in s.datasets}
    entries, memo = [e for e in m.datasets if e.prefix in used], {}
    t0 = time.perf_counter()
    m.verify(full=False, entries=entries, memo=memo)
    out["verify"] = time.perf_counter() - t0
    t0 = time.perf_counter()  # what compile pays once the memo has the .idx hashes (stat only)
    m.verify(full=False, entries=entries, memo=memo)
    out["verify_memo"] = time.perf_counter() - t0
    (stage,) = plan.stages
    sizes = np.array([d.samples for d in stage.datasets], dtype=np.int64)
    n = int(sizes.sum())
    t0 = time.perf_counter()
    blend_order(sizes, [d.domain for d in stage.datasets])
    out["blend_ours"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    helpers.build_blending_indices(
        np.zeros(n, np.int16), np.zeros(n, np.int64), sizes / n, len(sizes), n, False
    )
    out["blend_stock"] = time.perf_counter() - t0
    return out


def fresh(path: str) -> str:
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def parse_count(s: str) -> int:
    from ablate.recipe.budget import parse_tokens

    return parse_tokens(s, "token count")


# --- measurement 3: the scale recipe in a subprocess ----------------------------------------


def run_scale(args, work: str) -> dict:
    budget = parse_count(args.scale_tokens)
    data_tokens = int(budget * SCALE_DATA_FACTOR)
    data = os.path.join(work, f"data-{args.scale_datasets}x{data_tokens}-s{args.seed}")
    log(
        f"scale: data for {args.scale_datasets} datasets, {data_tokens:,} tokens "
        "(made once, kept) ..."
    )
    manifest = make_synthetic(data, args.scale_datasets, data_tokens, args.seed)
    # Shares in proportion to each group's data, so every dataset is read ~1/1.25 epoch.
    with open(manifest) as f:
        entries = json.load(f)["datasets"]
    group = lambda dom: dom.split(".")[0]  # noqa: E731
    totals = {
        g: sum(e["tokens"] for e in entries if group(e["domain"]) == g)
        for g in ("code", "math", "general")
    }
    raw = recipe_dict(
        "scale",
        manifest,
        fresh(os.path.join(work, "scale-cache")),
        os.path.join(work, "runs", "scale"),
        args.seq,
        args.scale_gbs,
        budget,
        mix(totals["code"] / data_tokens, totals["math"] / data_tokens),
    )
    recipe_path = os.path.join(work, "scale.yaml")
    with open(recipe_path, "w") as f:
        json.dump(raw, f, indent=1)  # JSON is YAML
    samples = (
        max(1, round(budget / (args.seq * args.scale_gbs))) * args.scale_gbs
    )  # make_plan's rounding

    # The real CLI, in its own process: its time includes interpreter and torch start-up, and
    # os.wait4 gives that one process's peak RSS (RUSAGE_CHILDREN would be the max over every
    # child this process ever waited for, the same here since it is the only one).
    cli = os.path.join(os.path.dirname(sys.executable), "ablate")
    cmd = (
        [cli]
        if os.path.exists(cli)
        else [sys.executable, "-c", "from ablate.cli import main; raise SystemExit(main())"]
    )
    log_path = os.path.join(work, "scale.log")
    indices = os.path.join(raw["data"]["cache_dir"], "indices")
    log(f"scale: ablate compile {recipe_path}  (~{samples:,} samples x {len(entries)} datasets)")
    t0 = time.perf_counter()
    with open(log_path, "w") as out:
        proc = subprocess.Popen(
            cmd + ["compile", recipe_path], stdout=out, stderr=subprocess.STDOUT, cwd=work
        )
    t_indices, last_print = None, t0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        now = time.perf_counter()
        if pid:
            break
        # Progress: finished per-dataset index directories (in-flight ones are *.tmp-*, *.lock).
        done = sum(1 for n in os.listdir(indices) if "." not in n) if os.path.isdir(indices) else 0
        if t_indices is None and done == len(entries):
            t_indices = now - t0  # from here on it is the blend and plan.json
        if now - last_print >= args.progress_every:
            phase = "blending" if t_indices is not None else "per-dataset indices"
            log(
                f"  scale: {now - t0:5.0f}s  {done}/{len(entries)} dataset indices built  ({phase})"
            )
            last_print = now
        time.sleep(0.2)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        with open(log_path) as f:
            sys.exit(f"scale compile failed (exit {proc.returncode}):\n{f.read()[-3000:]}")
    shutil.rmtree(raw["data"]["cache_dir"], ignore_errors=True)  # GBs at full scale
    return {
        "datasets": len(entries),
        "budget": budget,
        "data_tokens": data_tokens,
        "samples": samples,
        "seconds": seconds,
        "indices_s": t_indices,
        "peak_gib": usage.ru_maxrss * 1024 / 2**30,
    }


# --- the benchmark --------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--datasets", type=int, default=64, help="datasets for measurements 1-2 (default 64)"
    )
    ap.add_argument(
        "--tokens", default="32B", help="tokens the datasets hold in all, 1-2 (default 32B)"
    )
    ap.add_argument(
        "--stage-fraction",
        type=float,
        default=0.5,
        help="the recipe's budget as a fraction of --tokens, 1-2 (default 0.5)",
    )
    ap.add_argument("--seq", type=int, default=4096, help="sequence length (default 4096)")
    ap.add_argument("--gbs", type=int, default=512, help="global batch size, 1-2 (default 512)")
    ap.add_argument("--points", type=int, default=16, help="mixtures in the sweep (default 16)")
    ap.add_argument(
        "--repeat", type=int, default=3, help="best of N for the single compile (default 3)"
    )
    ap.add_argument("--skip-scale", action="store_true", help="skip measurement 3")
    ap.add_argument(
        "--scale-datasets", type=int, default=512, help="datasets of the scale recipe (default 512)"
    )
    ap.add_argument("--scale-tokens", default="1T", help="the scale recipe's budget (default 1T)")
    ap.add_argument(
        "--scale-gbs", type=int, default=1024, help="global batch size, scale (default 1024)"
    )
    ap.add_argument(
        "--progress-every", type=float, default=15, help="seconds between scale progress lines"
    )
    ap.add_argument(
        "--workdir",
        default=os.path.join(tempfile.gettempdir(), "ablate-bench-compile"),
        help="synthetic data (kept), caches and run dirs (removed)",
    )
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    work = os.path.abspath(args.workdir)
    os.makedirs(work, exist_ok=True)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # megatron-core warns at import when TE/Apex are absent
        import logging

        from ablate.recipe.compile import _single_process_group
        from ablate.recipe.plan import make_plan  # noqa: F401  (import cost paid by neither side)
        import megatron.core.datasets.blended_megatron_dataset_builder  # noqa: F401
        import megatron.core.datasets.gpt_dataset  # noqa: F401
    # ours silences this logger inside compile; silence it for stock too (equal log cost)
    logging.getLogger("megatron.core.datasets").setLevel(logging.ERROR)

    tokens = parse_count(args.tokens)
    stage_tokens = int(tokens * args.stage_fraction)
    data = os.path.join(work, f"data-{args.datasets}x{tokens}-s{args.seed}")
    log(f"data: {args.datasets} datasets, {tokens:,} tokens (made once, kept) ...")
    manifest = make_synthetic(data, args.datasets, tokens, args.seed)
    check_roundtrip(manifest, args.seed)

    def point(name: str, cache: str, code: float) -> dict:
        return recipe_dict(
            name,
            manifest,
            cache,
            os.path.join(work, "runs", name),
            args.seq,
            args.gbs,
            stage_tokens,
            sweep_mix(code),
        )

    # One world-size-1 gloo group for the whole run, as a training launch has: megatron-core's
    # builders need one, and neither side should pay its set-up (compile_recipe reuses it).
    with _single_process_group():
        # Warm-up, untimed: first calls import megatron-core's C++ helpers and fault in the .idx
        # files for both sides alike.
        _, base_plan = run_ours(point("warmup", fresh(os.path.join(work, "cache-warm")), BASE_CODE))
        run_stock(base_plan, fresh(os.path.join(work, "stock-warm")))
        (st,) = base_plan.stages
        log(
            f"recipe: {st.tokens:,} tokens = {st.samples:,} samples of {args.seq} "
            f"over {len(st.datasets)} datasets"
        )

        # 1. single compile, empty caches, best of --repeat (noise only ever adds time)
        ours_single = stock_single = math.inf
        for r in range(args.repeat):
            sides = ["ours", "stock"] if r % 2 == 0 else ["stock", "ours"]
            for side in sides:
                if side == "ours":
                    s, _ = run_ours(
                        point(f"single{r}", fresh(os.path.join(work, "cache")), BASE_CODE)
                    )
                    ours_single = min(ours_single, s)
                else:
                    s, _ = run_stock(base_plan, fresh(os.path.join(work, "stock-cache")))
                    stock_single = min(stock_single, s)
                log(f"  single #{r + 1} {side}: {s:.2f}s")

        # 2. the sweep: one shared cache per side, starting empty
        ours_cache, stock_cache = (
            fresh(os.path.join(work, "cache")),
            fresh(os.path.join(work, "stock-cache")),
        )
        ours_total = stock_total = 0.0
        sweep_times = []
        for i, code in enumerate(np.linspace(SWEEP_LOW, SWEEP_HIGH, args.points)):
            so, plan = run_ours(point(f"sweep{i:02d}", ours_cache, float(code)))
            ss, _ = run_stock(plan, stock_cache)
            ours_total += so
            stock_total += ss
            sweep_times.append(so)
            log(f"  sweep {i + 1}/{args.points} code={code:.2f}: ours {so:.2f}s, stock {ss:.2f}s")
        # 2b. the same mixtures as a sweep: `ablate sweep expand`, one process, from an empty
        # cache and no run directories each time; best of --repeat, as measurement 1
        ours_sweep = math.inf
        for r in range(args.repeat):
            sweep_cache = fresh(os.path.join(work, "cache"))
            shutil.rmtree(os.path.join(work, "runs", "sweep"), ignore_errors=True)
            s, _ = run_sweep(
                [
                    point(f"pre{i:02d}", sweep_cache, float(code))
                    for i, code in enumerate(np.linspace(SWEEP_LOW, SWEEP_HIGH, args.points))
                ],
                os.path.join(work, "runs", "sweep"),
            )
            ours_sweep = min(ours_sweep, s)
            log(f"  sweep expand #{r + 1}, {args.points} mixtures: ours {s:.2f}s")
        fixed = fixed_costs(base_plan)
    for d in ("cache", "stock-cache", "cache-warm", "stock-warm", "runs"):
        shutil.rmtree(os.path.join(work, d), ignore_errors=True)

    # 3. scale, in a subprocess of its own
    scale = None if args.skip_scale else run_scale(args, work)
    shutil.rmtree(os.path.join(work, "runs"), ignore_errors=True)

    print_report(
        args,
        st,
        tokens,
        ours_single,
        stock_single,
        ours_total,
        stock_total,
        fixed,
        scale,
        sweep_times,
        ours_sweep,
    )


def print_report(
    args,
    stage,
    tokens,
    ours_single,
    stock_single,
    ours_total,
    stock_total,
    fixed,
    scale,
    sweep_times,
    ours_sweep,
) -> None:
    from ablate.recipe.budget import format_tokens

    n = args.points
    print(
        "\nablate compile vs stock megatron-core BlendedMegatronDatasetBuilder: "
        f"{len(stage.datasets)} datasets "
        f"holding {format_tokens(tokens)} tokens; recipe {format_tokens(stage.tokens)} tokens = "
        f"{stage.samples:,} samples of {args.seq}; {os.cpu_count()} cores"
    )
    head = f"{'measurement':<32} {'ours s':>9} {'stock s':>9} {'ours/stock':>11} {'ratio':>22}"
    print(head)
    print("-" * len(head))
    single = ours_single / stock_single
    print(
        f"{'1. single compile (best of ' + str(args.repeat) + ')':<32} "
        f"{ours_single:>9.2f} {stock_single:>9.2f} {single:>10.2f}x {'':>22}"
    )
    sweep_ours, sweep_stock = ours_total / ours_single, stock_total / stock_single
    print(
        f"{f'2. sweep, {n} mixtures, total':<32} {ours_total:>9.2f} {stock_total:>9.2f} "
        f"{ours_total / stock_total:>10.2f}x "
        f"{f'/single: {sweep_ours:.2f}x ({sweep_stock:.2f}x)':>22}"
    )
    pre = ours_sweep / ours_single
    print(
        f"{f'2b. as a sweep (best of {args.repeat})':<32} {ours_sweep:>9.2f} {'':>9} {'':>11} "
        f"{f'/single: {pre:.2f}x':>22}"
    )
    later = sorted(sweep_times[1:]) or [float("nan")]
    print(
        f"   sweep mixtures after the first: median {later[len(later) // 2]:.2f}s, "
        f"max {later[-1]:.2f}s each"
    )
    print(
        f"   timed alone: manifest check {fixed['verify_memo']:.3f}s with the .idx hashes memoized "
        f"({fixed['verify']:.2f}s the first time), blend interleaving {fixed['blend_ours']:.2f}s "
        f"(stock's greedy {fixed['blend_stock']:.2f}s), "
        f"tokenizer load {fixed['tokenizer']:.2f}s (stock only)"
    )
    if scale:
        print(
            f"3. scale: {scale['datasets']} datasets, {format_tokens(scale['budget'])} budget "
            f"({format_tokens(scale['data_tokens'])} held), {scale['samples']:,} samples "
            f"of {args.seq}: {scale['seconds']:.1f}s wall "
            "(`ablate compile` process, start-up included; per-dataset indices done at "
            f"{scale['indices_s'] or float('nan'):.1f}s), peak RSS {scale['peak_gib']:.2f} GiB"
        )
    print("\ntargets (issue):")
    print(
        f"  single: ours/stock {single:.2f}x {'ok' if single <= 1.1 else 'MISS'} (target <= 1.1x)"
    )
    print(
        f"  sweep: ours total/ours single {sweep_ours:.2f}x one by one, {pre:.2f}x as a sweep "
        f"{'ok' if min(sweep_ours, pre) <= 2 else 'MISS'} (target <= 2x; stock {sweep_stock:.2f}x)"
    )
    if scale:
        full = scale["datasets"] >= 512 and scale["budget"] >= 10**12
        print(
            f"  scale: compiled in {scale['seconds']:.0f}s, peak {scale['peak_gib']:.2f} GiB "
            f"{'ok' if full else '(reduced size: not the target)'} "
            "(target: 512 datasets, 1T tokens, seq 4096 compiles)"
        )
    else:
        print("  scale: skipped (--skip-scale)")


if __name__ == "__main__":
    main()
