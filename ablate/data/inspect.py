"""``ablate data inspect``: a per-domain token table of a manifest."""

from __future__ import annotations

from collections import defaultdict

from ablate.data.manifest import Manifest


def domain_table(manifest: Manifest) -> str:
    rows: dict[str, list[int]] = defaultdict(
        lambda: [0, 0, 0, 0, 0]
    )  # datasets, docs, tokens, held-out tokens, bytes
    for d in manifest.datasets:
        r = rows[d.domain]
        r[0] += 1
        r[1] += d.documents
        r[2] += d.tokens
        r[4] += d.bytes
    for d in manifest.eval_datasets:
        rows[d.domain][3] += d.tokens
    total_tokens = sum(r[2] for r in rows.values()) or 1
    header = ("domain", "datasets", "documents", "tokens", "share", "held-out", "bytes/token")
    lines = [header]
    for domain in sorted(rows):
        n, docs, tokens, held, nbytes = rows[domain]
        lines.append(
            (
                domain,
                f"{n}",
                f"{docs:,}",
                f"{tokens:,}",
                f"{tokens / total_tokens:.1%}",
                f"{held:,}",
                f"{nbytes / tokens:.2f}" if tokens else "-",
            )
        )
    totals = [sum(r[i] for r in rows.values()) for i in range(5)]
    lines.append(
        (
            "total",
            f"{totals[0]}",
            f"{totals[1]:,}",
            f"{totals[2]:,}",
            "100.0%",
            f"{totals[3]:,}",
            f"{totals[4] / totals[2]:.2f}" if totals[2] else "-",
        )
    )
    widths = [max(len(r[i]) for r in lines) for i in range(len(header))]

    def fmt(r) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))
        )

    out = [
        f"{manifest.path}: tokenizer {manifest.tokenizer['fingerprint']} "
        f"(vocab {manifest.tokenizer['vocab_size']})",
        fmt(lines[0]),
        "  ".join("-" * w for w in widths),
    ]
    out += [fmt(r) for r in lines[1:-1]] + ["  ".join("-" * w for w in widths), fmt(lines[-1])]
    if manifest.probes:
        out.append(
            "probes: "
            + ", ".join(f"{k} ({v['count']})" for k, v in sorted(manifest.probes.items()))
        )
    out += _tagging_lines(manifest) + _decontamination_lines(manifest)
    return "\n".join(out)


def _tagging_lines(manifest: Manifest) -> list[str]:
    """Which tagger decided each tagged source's domains, with what thresholds."""
    lines = []
    for source, rec in sorted(manifest.tagging.items()):
        tagger = rec.get("tagger") or {}
        thresholds = ", ".join(f"{k} >= {v}" for k, v in sorted(rec.get("thresholds", {}).items()))
        skipped = sum((rec.get("skipped") or {}).values())
        lines.append(
            f"tagged: {source} by {tagger.get('name')} v{tagger.get('version')} ({thresholds})"
            + (f", {skipped:,} documents skipped" if skipped else "")
            + (" [reused shards]" if rec.get("reused") else "")
        )
    return lines


def _decontamination_lines(manifest: Manifest) -> list[str]:
    """Per source: documents that share an n-gram with an eval set, and what was done."""
    dc = manifest.decontamination
    if not dc:
        return []
    if not dc.get("enabled"):
        return ["decontamination: off"]
    sets = ", ".join(s["name"] for s in dc.get("against", {}).get("sets", []))
    lines = [f"decontamination: {dc.get('ngram')}-grams against {sets}; action {dc.get('action')}"]
    for source, c in sorted(dc.get("sources", {}).items()):
        by_set = ", ".join(f"{k} {v:,}" for k, v in c.get("by_eval_set", {}).items())
        lines.append(
            f"  {source}: {c.get('contaminated', 0):,} of {c.get('documents', 0):,} documents"
            f" overlap{f' ({by_set})' if by_set else ''}, {c.get('dropped', 0):,} dropped"
        )
    if dc.get("missing"):
        lines.append("  not found, not checked: " + ", ".join(dc["missing"]))
    return lines
