"""How well the registered taggers label the labelled set: per tagger, per class precision,
recall, F1 and support, and the confusion matrix.

Each document is tagged whole, as the driver tags an unsegmented document: the tagger built
from the registry with its default options, ``segments`` on the document (it must give one
segment), then ``decide`` on that segment's scores with the tagger's default thresholds. A
document the tagger refuses (``SkipDocument``) counts as the prediction ``skip``: it was not
given its label, so it costs recall like any other miss.

``python -m ablate.data.tagging.quality [--split dev|test|all] [--markdown]`` prints the tables
(the docs report ``--split test``; tune on ``dev``).
"""

from __future__ import annotations

import argparse
import sys

from ablate.data.tagging.base import Document, SkipDocument
from ablate.data.tagging.labelled import LabelledDoc, load_labelled
from ablate.data.tagging.registry import build_tagger
from ablate.errors import AblateError

SPLITS = ("dev", "test", "all")
SKIP = "skip"


def predict(tagger, doc: LabelledDoc) -> str:
    """The domain ``tagger`` decides for the whole document (or ``skip``)."""
    try:
        segments = tagger.segments(Document(doc.text, doc.kind))
    except SkipDocument:
        return SKIP
    if len(segments) != 1:
        raise AblateError(
            f"quality: tagger {tagger.name!r} gave {len(segments)} segments for {doc.id} with its "
            "default options; the quality figures are for whole documents (one segment)"
        )
    return tagger.decide(segments[0].scores, dict(tagger.thresholds))


def scores_of(gold: list[str], predicted: list[str]) -> dict:
    """Per gold class precision, recall, F1 and support; the confusion matrix gold -> predicted
    -> count (predicted classes may lie outside the gold ones, e.g. ``skip``); accuracy and the
    macro-average F1 over the gold classes."""
    classes = sorted(set(gold))
    confusion = {g: {} for g in classes}
    for g, p in zip(gold, predicted, strict=True):
        confusion[g][p] = confusion[g].get(p, 0) + 1
    per_class = {}
    for c in classes:
        tp = confusion[c].get(c, 0)
        support = sum(confusion[c].values())
        predicted_c = sum(row.get(c, 0) for row in confusion.values())
        precision = tp / predicted_c if predicted_c else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[c] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    correct = sum(g == p for g, p in zip(gold, predicted, strict=True))
    return {
        "classes": per_class,
        "confusion": {g: dict(sorted(row.items())) for g, row in confusion.items()},
        "accuracy": correct / len(gold) if gold else 0.0,
        "macro_f1": sum(v["f1"] for v in per_class.values()) / len(per_class) if per_class else 0.0,
        "documents": len(gold),
    }


def source_of(doc: LabelledDoc) -> str:
    """Where a document comes from, for the per-source accuracy: its reference kind, with the
    render for GSM8K (``gsm8k/prose``)."""
    kind = doc.ref.get("kind", "?")
    return f"{kind}/{doc.ref['render']}" if kind == "gsm8k" else kind


def measure(docs: list[LabelledDoc], split: str = "test") -> dict:
    """``{tagger name: scores_of(...) plus its version and the split}`` for every tagger the
    documents of ``split`` (``dev``, ``test`` or ``all``) name, in name order."""
    if split not in SPLITS:
        raise AblateError(f"quality: split {split!r} (allowed: {', '.join(SPLITS)})")
    chosen = [d for d in docs if split == "all" or d.split == split]
    result = {}
    for name in sorted({d.tagger for d in chosen}):
        tagger = build_tagger(name, {}, "quality")
        mine = [d for d in chosen if d.tagger == name]
        predicted = [predict(tagger, d) for d in mine]
        by_source: dict[tuple[str, str], dict[str, int]] = {}
        for d, p in zip(mine, predicted, strict=True):
            entry = by_source.setdefault((source_of(d), d.label), {"documents": 0, "correct": 0})
            entry["documents"] += 1
            entry["correct"] += p == d.label
        result[name] = {
            "version": tagger.version,
            "split": split,
            **scores_of([d.label for d in mine], predicted),
            # (source, label, documents, correctly decided), sorted by source and label
            "by_source": [
                (*key, v["documents"], v["correct"]) for key, v in sorted(by_source.items())
            ],
            "errors": [
                (d.id, d.label, p) for d, p in zip(mine, predicted, strict=True) if p != d.label
            ],
        }
    return result


def render(result: dict, markdown: bool = False) -> str:
    """The per-class table and the confusion matrix of every tagger, as text or Markdown."""
    out = []
    for name, r in result.items():
        title = (
            f"tagger {name} (version {r['version']}), split {r['split']}: {r['documents']} "
            f"documents, accuracy {r['accuracy']:.3f}, macro F1 {r['macro_f1']:.3f}"
        )
        rows = [
            [c, f"{v['precision']:.3f}", f"{v['recall']:.3f}", f"{v['f1']:.3f}", str(v["support"])]
            for c, v in r["classes"].items()
        ]
        out += [f"### {title}" if markdown else title, ""]
        out += _table(["class", "precision", "recall", "F1", "support"], rows, markdown) + [""]
        predicted = sorted({p for row in r["confusion"].values() for p in row})
        matrix = [
            [g] + [str(r["confusion"][g].get(p, 0)) for p in predicted] for g in r["confusion"]
        ]
        out.append("Confusion (rows: label, columns: decided):" if markdown else "confusion:")
        out += [""] if markdown else []
        out += _table(["label \\ decided", *predicted], matrix, markdown) + [""]
        sources = [
            [src, label, str(n), f"{correct / n:.3f}"] for src, label, n, correct in r["by_source"]
        ]
        out.append("By source:" if markdown else "by source:")
        out += [""] if markdown else []
        out += _table(["source", "label", "documents", "accuracy"], sources, markdown) + [""]
    return "\n".join(out).rstrip() + "\n"


def _table(header: list[str], rows: list[list[str]], markdown: bool) -> list[str]:
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return lines + ["| " + " | ".join(row) + " |" for row in rows]
    widths = [max(len(x) for x in col) for col in zip(header, *rows, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return [fmt.format(*header)] + [fmt.format(*row) for row in rows]


# tagger -> the score its first decision cuts on (the one a researcher moves in a sweep)
DECIDING_SCORE = {"code": "prose_ratio", "math": "structure_score"}


def score_figures(docs: list[LabelledDoc], split: str, out_dir: str) -> list[str]:
    """One PNG per tagger: the distribution of its deciding score per labelled class, with the
    default threshold drawn in, so a reader sees how far apart the classes sit and what moving
    the threshold would cost. Returns the files written."""
    import os

    from matplotlib.figure import Figure

    from ablate.data.tagging.base import Document

    chosen = [d for d in docs if split == "all" or d.split == split]
    written = []
    for name in sorted({d.tagger for d in chosen}):
        tagger = build_tagger(name, {}, "quality")
        score = DECIDING_SCORE[name]
        values: dict[str, list[float]] = {}
        for d in chosen:
            if d.tagger == name:
                segments = tagger.segments(Document(d.text, d.kind))
                values.setdefault(d.label, []).append(segments[0].scores.get(score, 0.0))
        fig = Figure(figsize=(7, 3.2), dpi=110)
        ax = fig.add_subplot()
        bins = [i / 40 for i in range(41)]
        for label in sorted(values):
            ax.hist(values[label], bins=bins, alpha=0.55, label=f"{label} ({len(values[label])})")
        cut = tagger.thresholds[score]
        ax.axvline(cut, color="black", linestyle="--", linewidth=1)
        ax.text(cut, ax.get_ylim()[1] * 0.95, f" threshold {cut}", va="top", fontsize=8)
        ax.set_xlabel(f"{score} (tagger {name} v{tagger.version})")
        ax.set_ylabel("documents")
        ax.set_title(f"{name} tagger: {score} by labelled class, split {split}", fontsize=10)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(out_dir, f"{name}-{score.replace('_', '-')}.png")
        os.makedirs(out_dir, exist_ok=True)
        fig.savefig(path, metadata={"Software": None})  # no version stamp: same input, same bytes
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ablate.data.tagging.quality",
        description="Precision, recall and F1 per class of the taggers on the labelled set.",
    )
    parser.add_argument("--split", choices=SPLITS, default="test")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    parser.add_argument("--labels", default=None, help="labels.jsonl (default: tests/data/tagging)")
    parser.add_argument("--benchmarks", default=None, help="a directory like ../shared/benchmarks")
    parser.add_argument(
        "--errors", action="store_true", help="also list the misclassified documents"
    )
    parser.add_argument(
        "--figures", metavar="DIR", default=None, help="also write score histograms (PNG) to DIR"
    )
    args = parser.parse_args(argv)
    try:
        docs = load_labelled(args.labels, args.benchmarks)
        result = measure(docs, args.split)
        if args.figures:
            for path in score_figures(docs, args.split, args.figures):
                print(f"wrote {path}", file=sys.stderr)
    except AblateError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(render(result, args.markdown), end="")
    if args.errors:
        for name, r in result.items():
            for doc_id, label, decided in r["errors"]:
                print(f"{name}\t{doc_id}\t{label}\t-> {decided}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
