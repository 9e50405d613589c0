"""Bits per byte on every domain's held-out split: the proxy that moves first for small models.

Each domain's held-out documents are read through megatron-core's ``IndexedDataset``, joined
into one stream exactly as training packs them (every document followed by ``eod``), and cut
into windows of the training sequence length. bpb = Σ token NLL / bytes / ln 2, where the sum
runs over text tokens only (predicting ``eod`` is not text) and bytes are the UTF-8 bytes of the
scored documents. At most ``bpb_tokens`` tokens per domain, whole documents, first ones first,
so every checkpoint is scored on the same text.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ablate.data.indexed import open_indexed
from ablate.evals.tasks.base import Task, TaskResult


def eval_domains(ctx) -> list[str]:
    return sorted({e.domain for m in ctx.em.manifests for e in m.eval_datasets})


def eval_fingerprints(ctx) -> list[str]:
    """What identifies the held-out text: every eval split's content fingerprint."""
    return sorted(e.fingerprint for m in ctx.em.manifests for e in m.eval_datasets)


class BitsPerByte(Task):
    name = "bpb"
    version = 1

    def data_identity(self, ctx) -> dict:
        return {
            "datasets": eval_fingerprints(ctx),
            "max_tokens": ctx.options.bpb_tokens,
            "seq_length": ctx.em.seq_length,
        }

    def run(self, ctx) -> TaskResult:
        metrics, per_metric, total_nll, total_bytes, total_tokens = {}, {}, 0.0, 0, 0
        for domain in eval_domains(ctx):
            nll, tokens, nbytes = score_domain(ctx, domain)
            if not nbytes:
                continue
            metrics[f"bpb/{domain}"] = nll / nbytes / math.log(2)
            per_metric[f"bpb/{domain}"] = tokens
            total_nll, total_bytes, total_tokens = (
                total_nll + nll,
                total_bytes + nbytes,
                total_tokens + tokens,
            )
            ctx.progress(f"bpb {domain}: {metrics[f'bpb/{domain}']:.4f}")
        metrics["bpb"] = total_nll / total_bytes / math.log(2)
        per_metric["bpb"] = total_tokens
        return TaskResult(metrics=metrics, samples=total_tokens, samples_by_metric=per_metric)


def score_domain(ctx, domain: str) -> tuple[float, int, int]:
    """(Σ NLL in nats over text tokens, text tokens scored, bytes) for one domain."""
    tok = ctx.em.tokenizer
    docs, nbytes = held_out_documents(ctx, domain, ctx.options.bpb_tokens)
    if not docs:
        return 0.0, 0, 0
    stream = np.concatenate([[tok.eod], *docs]).astype(
        np.int64
    )  # the first document follows an eod, as in training
    S = ctx.em.seq_length
    n_windows = math.ceil((len(stream) - 1) / S)
    nll, counted = 0.0, 0
    B = ctx.options.batch_size
    for start in range(0, n_windows, B):
        rows = range(start, min(start + B, n_windows))
        inputs = torch.full((len(rows), S), tok.pad, dtype=torch.long)
        targets = torch.full(
            (len(rows), S), tok.eod, dtype=torch.long
        )  # eod targets are not scored
        for b, w in enumerate(rows):
            chunk = torch.from_numpy(stream[w * S : w * S + S + 1])
            inputs[b, : len(chunk) - 1] = chunk[:-1]
            targets[b, : len(chunk) - 1] = chunk[1:]
        nll_BS = ctx.lm.target_nll(inputs, targets)
        mask_BS = (targets != tok.eod).to(nll_BS.device)
        nll += float((nll_BS * mask_BS).double().sum())
        counted += int(mask_BS.sum())
    return nll, counted, nbytes


def held_out_documents(ctx, domain: str, budget: int) -> tuple[list[np.ndarray], int]:
    """Whole held-out documents of ``domain`` up to ``budget`` tokens, and their bytes: the
    manifest's count when a split is scored whole, else the decoded text's UTF-8 length."""
    tok = ctx.em.tokenizer
    docs: list[np.ndarray] = []
    tokens, nbytes = 0, 0
    for manifest in ctx.em.manifests:
        for entry in manifest.eval_datasets:
            if entry.domain != domain:
                continue
            ds = open_indexed(manifest.abs_prefix(entry))
            taken = []
            for i in range(len(ds)):
                # a copy: megatron-core closes the memory map when the dataset object goes away
                doc = np.array(ds[i], dtype=np.int64)
                if tokens + len(doc) > budget and (docs or taken):
                    break
                taken.append(doc)
                tokens += len(doc)
            docs.extend(taken)
            if len(taken) == len(ds):
                nbytes += entry.bytes
            else:
                nbytes += sum(
                    len(tok.decode(d[d != tok.eod].tolist()).encode("utf-8")) for d in taken
                )
                return docs, nbytes
    return docs, nbytes
