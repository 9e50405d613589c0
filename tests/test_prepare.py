"""``ablate data prepare``: round trip through megatron-core, determinism, manifest, formats."""

from __future__ import annotations

import filecmp
import os
import random

import pytest

from ablate.data import ingest
from ablate.data.indexed import open_indexed
from ablate.data.manifest import load_manifest, load_manifests
from ablate.data.prepare import prepare
from ablate.data.tokenizer import load_tokenizer
from ablate.errors import AblateError

from conftest import SAMPLE_TEXTS, write_jsonl, write_spec

DOMAINS = ["code.exec", "math.structured", "general", "math.text"]


def make_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        text = rng.choice(SAMPLE_TEXTS) + f" #{i} " + "x" * rng.randint(0, 300)
        rows.append({"text": text, "domain": rng.choice(DOMAINS), "id": i})
    return rows


@pytest.fixture
def corpus(tmp_path):
    rows = make_rows(1500)
    write_jsonl(tmp_path / "in" / "a.jsonl", rows[:900])
    write_jsonl(tmp_path / "in" / "b.jsonl", rows[900:])
    spec = write_spec(
        tmp_path / "corpora.yaml",
        [{"path": "in/*.jsonl", "name": "mixed"}],
        seed=7,
        eval_fraction=0.1,
    )
    return spec, rows


def read_back(manifest, entry) -> list[list[int]]:
    ds = open_indexed(manifest.abs_prefix(entry))
    return [ds[i].tolist() for i in range(len(ds))]


@pytest.mark.parametrize("tokenizer", ["byte", "hf"])
def test_round_trip_token_for_token_through_megatron_indexed_dataset(
    tmp_path, corpus, tokenizer, bpe_tokenizer_json
):
    spec, rows = corpus
    if tokenizer == "hf":
        spec = write_spec(
            tmp_path / "corpora_hf.yaml",
            [{"path": "in/*.jsonl", "name": "mixed"}],
            seed=7,
            eval_fraction=0.1,
            tokenizer=bpe_tokenizer_json,
        )
    result = prepare(spec, str(tmp_path / "out"), workers=1)
    m = result.manifest
    tok = load_tokenizer(m.tokenizer, m.root)

    expected: dict[tuple, list[list[int]]] = {}
    seed_key = "7:mixed".encode()
    for row in rows:
        split = "eval" if ingest.is_eval(seed_key, row["text"], 0.1) else "train"
        expected.setdefault((row["domain"], split), []).append(tok.encode(row["text"]) + [tok.eod])

    entries = m.datasets + m.eval_datasets
    assert {(e.domain, e.split) for e in entries} == set(expected)
    for e in entries:
        docs = read_back(m, e)
        assert docs == expected[(e.domain, e.split)], e.prefix  # same tokens, same order
        ds = open_indexed(m.abs_prefix(e))
        assert e.tokens == int(ds.sequence_lengths.sum())  # manifest counts = .idx lengths
        assert e.documents == len(ds) == len(ds.document_indices) - 1
        assert e.bytes == sum(
            len(r["text"].encode())
            for r in rows
            if r["domain"] == e.domain
            and (ingest.is_eval(seed_key, r["text"], 0.1) == (e.split == "eval"))
        )
        assert e.tokenizer == tok.fingerprint
    assert sum(e.documents for e in entries) == len(rows)
    assert 0 < sum(e.documents for e in m.eval_datasets) < 0.2 * len(rows)
    if tokenizer == "hf":  # the data directory carries its own tokenizer
        assert m.tokenizer["path"] == "tokenizer.json"
        assert os.path.isfile(os.path.join(m.root, "tokenizer.json"))


def test_same_input_gives_byte_identical_files_whatever_the_worker_count(
    tmp_path, corpus, monkeypatch
):
    spec, _ = corpus
    monkeypatch.setattr(ingest, "JSONL_CHUNK_BYTES", 20_000)  # many tasks per file
    outs = []
    for name, workers in (("w1", 1), ("w2", 2), ("w1again", 1)):
        prepare(spec, str(tmp_path / name), workers=workers)
        outs.append(tmp_path / name)
    files = sorted(
        os.path.relpath(os.path.join(d, f), outs[0]) for d, _, fs in os.walk(outs[0]) for f in fs
    )
    assert "manifest.json" in files and len(files) >= 9
    for other in outs[1:]:
        other_files = sorted(
            os.path.relpath(os.path.join(d, f), other) for d, _, fs in os.walk(other) for f in fs
        )
        assert other_files == files
        match, mismatch, errors = filecmp.cmpfiles(outs[0], other, files, shallow=False)
        assert mismatch == [] and errors == [], (mismatch, errors)


def test_chunked_tasks_cover_every_line_exactly_once(tmp_path, monkeypatch):
    monkeypatch.setattr(ingest, "JSONL_CHUNK_BYTES", 1000)
    path = write_jsonl(tmp_path / "x.jsonl", make_rows(300))
    ranges = ingest.split_file(path, "jsonl")
    assert len(ranges) > 10
    data = open(path, "rb").read()
    assert ranges[0][0] == 0 and ranges[-1][1] == len(data)
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert all(data[s - 1 : s] == b"\n" for s, _ in ranges[1:])  # every cut is at a line start


def test_rerun_is_unchanged_and_a_different_spec_is_refused(tmp_path, corpus, cli):
    spec, _ = corpus
    out = tmp_path / "out"
    assert prepare(spec, str(out), workers=1).state == "created"
    before = (out / "manifest.json").read_bytes()
    assert prepare(spec, str(out), workers=1).state == "unchanged"
    assert (out / "manifest.json").read_bytes() == before
    other = write_spec(tmp_path / "other.yaml", [{"path": "in/a.jsonl"}], seed=7)
    r = cli("data", "prepare", other, "--out", out)
    assert r.rc == 2 and "already holds a different dataset" in r.err
    assert (out / "manifest.json").read_bytes() == before  # untouched
    assert prepare(other, str(out), workers=1, overwrite=True).state == "replaced"
    assert load_manifest(str(out)).spec["sources"][0]["path"] == "in/a.jsonl"
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]  # no staging left


def test_source_domain_tags_every_row_and_parquet_and_directories_are_read(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = make_rows(200, seed=3)
    table = pa.table({"content": [r["text"] for r in rows], "other": list(range(200))})
    os.makedirs(tmp_path / "pq" / "sub")
    pq.write_table(table.slice(0, 120), tmp_path / "pq" / "part0.parquet", row_group_size=50)
    pq.write_table(table.slice(120), tmp_path / "pq" / "sub" / "part1.parquet")
    write_jsonl(tmp_path / "pq" / "sub" / "more.jsonl", [{"content": "extra doc"}])
    spec = write_spec(
        tmp_path / "c.yaml",
        [{"path": "pq", "domain": "code.nl", "text_field": "content"}],
        eval_fraction=0.0,
    )
    m = prepare(spec, str(tmp_path / "out"), workers=2).manifest
    assert [(e.domain, e.source, e.prefix) for e in m.datasets] == [("code.nl", "pq", "pq/code.nl")]
    assert m.eval_datasets == []
    docs = read_back(m, m.datasets[0])
    # files in sorted path order: pq/part0.parquet, pq/sub/more.jsonl, pq/sub/part1.parquet
    texts = [r["text"] for r in rows[:120]] + ["extra doc"] + [r["text"] for r in rows[120:]]
    assert docs == [list(t.encode()) + [256] for t in texts]


def test_empty_documents_are_skipped_not_written(tmp_path):
    path = write_jsonl(
        tmp_path / "x.jsonl",
        [{"text": "a", "domain": "general"}, {"text": "", "domain": "general"}],
    )
    spec = write_spec(tmp_path / "c.yaml", [{"path": path}], eval_fraction=0.0)
    m = prepare(spec, str(tmp_path / "out"), workers=1).manifest
    assert m.datasets[0].documents == 1 and m.datasets[0].tokens == 2


def test_verify_catches_a_changed_dataset_file(tmp_path, corpus, cli):
    spec, _ = corpus
    m = prepare(spec, str(tmp_path / "out"), workers=1).manifest
    assert cli("data", "inspect", m.path, "--verify").rc == 0
    binpath = m.abs_prefix(m.datasets[0]) + ".bin"
    data = bytearray(open(binpath, "rb").read())
    data[0] ^= 1
    open(binpath, "wb").write(bytes(data))
    r = cli("data", "inspect", m.path, "--verify")
    assert r.rc == 2 and "no longer match their fingerprint" in r.err


def test_manifests_made_with_different_tokenizers_cannot_be_mixed(
    tmp_path, corpus, bpe_tokenizer_json
):
    spec, _ = corpus
    a = prepare(spec, str(tmp_path / "a"), workers=1).manifest
    spec_hf = write_spec(
        tmp_path / "hf.yaml", [{"path": "in/a.jsonl"}], tokenizer=bpe_tokenizer_json
    )
    b = prepare(spec_hf, str(tmp_path / "b"), workers=1).manifest
    assert len(load_manifests([a.path, a.path])) == 2
    with pytest.raises(AblateError, match="different tokenizers cannot be mixed"):
        load_manifests([a.path, b.path])


def test_inspect_prints_a_per_domain_token_table(tmp_path, corpus, cli):
    spec, _ = corpus
    m = prepare(spec, str(tmp_path / "out"), workers=1).manifest
    r = cli("data", "inspect", str(tmp_path / "out" / "manifest.json"))
    assert r.rc == 0
    lines = r.out.splitlines()
    for d in DOMAINS:
        row = next(line for line in lines if line.startswith(d + " "))
        tokens = sum(e.tokens for e in m.datasets if e.domain == d)
        assert f"{tokens:,}" in row
    total = next(line for line in lines if line.startswith("total"))
    assert f"{sum(e.tokens for e in m.datasets):,}" in total


def test_row_locations_are_computed_only_for_errors(tmp_path, corpus, monkeypatch):
    """Per-row domains used to format each row's 'file: line N' eagerly: reading the file up to
    the row, for every row (quadratic). A valid corpus must never need a location."""
    spec, _ = corpus

    def boom(*args):
        raise AssertionError("a row location was computed for a valid row")

    monkeypatch.setattr(ingest, "_line_number", boom)
    monkeypatch.setattr(ingest, "JSONL_CHUNK_BYTES", 20_000)  # later chunks: where the cost was
    prepare(spec, str(tmp_path / "out"), workers=1)  # in-process, so the patch applies


def test_overwrite_replaces_only_what_a_previous_prepare_wrote(tmp_path):
    """A generated source's output (raw rows, probes, datasets, manifest) is recognised as
    prepare's own and replaced whole; the corpus beside it and the parent directory are not
    touched, and no temporary is left."""
    from ablate.data.outdir import foreign_files

    small = {"reader": "toyworld", "options": {"documents_per_domain": 20, "probes_per_task": 5}}
    spec = write_spec(tmp_path / "a.yaml", [small])
    out = tmp_path / "out"
    first = prepare(spec, str(out), workers=1).manifest
    assert foreign_files(str(out), first) == []  # every file it wrote is named by its manifest
    write_jsonl(tmp_path / "in" / "a.jsonl", [{"text": "x", "domain": "general"}])
    other = write_spec(tmp_path / "b.yaml", [{"path": "in"}])
    result = prepare(other, str(out), workers=1, overwrite=True)
    assert result.state == "replaced"
    assert sorted(os.listdir(out)) == ["in", "manifest.json"]
    assert sorted(os.listdir(tmp_path)) == ["a.yaml", "b.yaml", "in", "out"]


def test_a_dead_runs_staging_is_removed_even_when_its_pid_is_ours(tmp_path, corpus):
    """In a container pids start again from 1: a killed run's staging can carry this process's
    own pid, which the stale-temporary rule (dead owner) never removes."""
    from ablate.io import tmp_name

    spec, _ = corpus
    out = tmp_path / "out"
    left = tmp_name(str(out))
    os.makedirs(os.path.join(left, ".shards"))
    open(os.path.join(left, "manifest.json"), "w").write("{}")
    assert prepare(spec, str(out), workers=1).state == "created"
    assert not os.path.exists(left) and not [p for p in os.listdir(tmp_path) if ".tmp-" in p]
