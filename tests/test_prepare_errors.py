"""Bad input to ``ablate data prepare``: one clear line, exit 2, no traceback, nothing left
behind."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import assert_one_line_error, write_jsonl, write_spec

GOOD = {"text": "hello", "domain": "general"}


def run_bad(cli, tmp_path, spec, *fragments, workers="2"):
    out = tmp_path / "out"
    r = cli("data", "prepare", spec, "--out", out, "--workers", workers)
    assert_one_line_error(r, *fragments)
    assert not out.exists(), "a failed prepare must not leave an output directory"
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p], "staging left behind"
    return r


def spec_for(tmp_path, path, **source):
    return write_spec(tmp_path / "corpora.yaml", [{"path": os.path.basename(path), **source}])


def test_missing_text_field(tmp_path, cli):
    path = write_jsonl(tmp_path / "c.jsonl", [GOOD, GOOD, {"body": "x", "domain": "general"}])
    run_bad(
        cli,
        tmp_path,
        spec_for(tmp_path, path),
        "c.jsonl: line 3",
        "missing text field 'text'",
        "body",
    )


def test_text_field_of_the_wrong_type(tmp_path, cli):
    path = write_jsonl(tmp_path / "c.jsonl", [GOOD, {"text": None, "domain": "general"}])
    run_bad(
        cli,
        tmp_path,
        spec_for(tmp_path, path),
        "c.jsonl: line 2",
        "field 'text' must be a string, got null",
    )


def test_unknown_domain_in_a_row(tmp_path, cli):
    path = write_jsonl(tmp_path / "c.jsonl", [GOOD, {"text": "x", "domain": "maths"}])
    run_bad(
        cli,
        tmp_path,
        spec_for(tmp_path, path),
        "c.jsonl: line 2",
        "field 'domain'",
        "'maths' is not a known domain",
        "math.text",
    )


def test_unknown_domain_on_a_source(tmp_path, cli):
    path = write_jsonl(tmp_path / "c.jsonl", [GOOD])
    run_bad(
        cli,
        tmp_path,
        spec_for(tmp_path, path, domain="cooking"),
        "corpora.yaml: sources[0].domain",
        "'cooking' is not a known domain",
    )


def test_rows_without_domain_and_no_source_domain(tmp_path, cli):
    path = write_jsonl(tmp_path / "c.jsonl", [{"text": "x"}])
    run_bad(
        cli, tmp_path, spec_for(tmp_path, path), "c.jsonl: line 1", "missing domain field 'domain'"
    )


def test_empty_file(tmp_path, cli):
    (tmp_path / "c.jsonl").write_text("")
    run_bad(cli, tmp_path, spec_for(tmp_path, tmp_path / "c.jsonl"), "c.jsonl: empty file")


def test_file_of_blank_lines_is_empty_too(tmp_path, cli):
    (tmp_path / "c.jsonl").write_text("\n  \n\n")
    run_bad(cli, tmp_path, spec_for(tmp_path, tmp_path / "c.jsonl"), "c.jsonl: empty file")


def test_invalid_utf8(tmp_path, cli):
    path = tmp_path / "c.jsonl"
    path.write_bytes(
        b'{"text": "ok", "domain": "general"}\n{"text": "caf\xe9", "domain": "general"}\n'
    )
    run_bad(cli, tmp_path, spec_for(tmp_path, path), "c.jsonl: line 2", "invalid UTF-8")


def test_non_json_line_far_into_a_chunked_file(tmp_path, cli, monkeypatch):
    from ablate.data import ingest

    monkeypatch.setattr(ingest, "JSONL_CHUNK_BYTES", 500)  # the error falls in a later chunk
    path = tmp_path / "c.jsonl"
    write_jsonl(path, [GOOD] * 100)
    with open(path, "a") as f:
        f.write("{not json}\n")
    run_bad(cli, tmp_path, spec_for(tmp_path, path), "c.jsonl: line 101", "not valid JSON")


def test_json_that_is_not_an_object(tmp_path, cli):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "a", "domain": "general"}\n["a list"]\n')
    run_bad(
        cli,
        tmp_path,
        spec_for(tmp_path, path),
        "c.jsonl: line 2",
        "expected a JSON object, got list",
    )


def test_unreadable_parquet(tmp_path, cli):
    path = tmp_path / "c.parquet"
    path.write_bytes(b"PAR1 this is not parquet at all")
    run_bad(
        cli,
        tmp_path,
        spec_for(tmp_path, path, domain="general"),
        "c.parquet: not a readable Parquet file",
    )


def test_parquet_without_the_text_column(tmp_path, cli):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["a", "b"]}), tmp_path / "c.parquet")
    run_bad(
        cli,
        tmp_path,
        spec_for(tmp_path, tmp_path / "c.parquet", domain="general"),
        "c.parquet",
        "no column 'text'",
        "body",
    )


def test_tokenizer_file_missing(tmp_path, cli):
    write_jsonl(tmp_path / "c.jsonl", [GOOD])
    spec = write_spec(
        tmp_path / "corpora.yaml", [{"path": "c.jsonl"}], tokenizer="tok/tokenizer.json"
    )
    run_bad(cli, tmp_path, spec, "corpora.yaml: tokenizer", "tokenizer.json' does not exist")


def test_output_directory_holding_a_different_dataset(tmp_path, cli):
    write_jsonl(tmp_path / "a.jsonl", [GOOD])
    write_jsonl(tmp_path / "b.jsonl", [{"text": "other", "domain": "code.exec"}])
    out = tmp_path / "out"
    assert (
        cli(
            "data", "prepare", write_spec(tmp_path / "a.yaml", [{"path": "a.jsonl"}]), "--out", out
        ).rc
        == 0
    )
    before = sorted(os.listdir(out))
    r = cli("data", "prepare", write_spec(tmp_path / "b.yaml", [{"path": "b.jsonl"}]), "--out", out)
    assert_one_line_error(r, str(out), "already holds a different dataset", "--overwrite")
    assert sorted(os.listdir(out)) == before


def test_output_directory_holding_something_else(tmp_path, cli):
    write_jsonl(tmp_path / "a.jsonl", [GOOD])
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    r = cli("data", "prepare", write_spec(tmp_path / "a.yaml", [{"path": "a.jsonl"}]), "--out", out)
    assert_one_line_error(r, "is not empty and holds no manifest.json")
    assert (out / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    "source, fragments",
    [
        ({"path": "nothing/*.jsonl"}, ("sources[0].path", "matches no file")),
        ({"path": "missing.jsonl"}, ("sources[0].path", "does not exist")),
        ({"path": "a.jsonl", "colour": "red"}, ("sources[0]", "unknown key 'colour'")),
        ({"path": "a.jsonl", "eval_fraction": 1.5}, ("sources[0].eval_fraction", "out of range")),
        ({"reader": "csv", "path": "a.jsonl"}, ("sources[0].reader", "'csv' is not a reader")),
        (
            {"reader": "toyworld", "options": {"documents_per_domain": 0}},
            ("documents_per_domain", "must be an integer in [1, "),
        ),
        (
            {"reader": "gsm8k", "path": ".", "options": {"splits": ["test"]}},
            ("splits", "contaminates GSM8K"),
        ),
    ],
)
def test_bad_corpora_yaml_fields(tmp_path, cli, source, fragments):
    write_jsonl(tmp_path / "a.jsonl", [GOOD])
    run_bad(
        cli, tmp_path, write_spec(tmp_path / "corpora.yaml", [source]), "corpora.yaml", *fragments
    )


def test_spec_that_does_not_exist(tmp_path, cli):
    run_bad(
        cli, tmp_path, str(tmp_path / "nope.yaml"), "nope.yaml: no such corpora YAML", "toyworld"
    )


def test_the_console_script_prints_no_traceback(tmp_path):
    """The same contract through the installed entry point, in a real subprocess."""
    write_jsonl(tmp_path / "c.jsonl", [{"text": "x", "domain": "nope"}])
    spec = spec_for(tmp_path, tmp_path / "c.jsonl")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ablate.cli",
            "data",
            "prepare",
            spec,
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert "c.jsonl: line 1" in proc.stderr
    assert not (tmp_path / "out").exists()
