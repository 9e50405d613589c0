"""Refusals of ``ablate data prepare`` and ``ablate data inspect [--verify]``, as a table.

Each row damages one thing (a source file, the corpora spec's relation to ``--out``, a flag, a
field of a prepared manifest, a dataset file) and holds the command to the bad-input contract
(``conftest.assert_refused``): exit 2, one line naming the file and field, no traceback, and
the whole case directory (inputs and outputs) unchanged. Everything runs in-process with one
worker; real kills, full disks and read-only file systems are in ``test_faults_prepare.py``.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil

import pytest

from conftest import assert_refused, write_jsonl, write_spec

ROWS = [
    {"text": f"document {i} " + "words " * (i % 7), "domain": ("general", "code.exec")[i % 2]}
    for i in range(60)
]


@pytest.fixture(autouse=True)
def private_tempdir(tmp_path_factory, monkeypatch):
    """``assert_refused`` checks the temp dir for ``ablate-*`` names this run left behind; a
    private one keeps other test runs on the same machine out of that check."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path_factory.mktemp("tempdir")))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A small prepared data directory (shared: cases copy it before damaging it)."""
    from ablate.data.prepare import prepare

    root = tmp_path_factory.mktemp("prepared")
    write_jsonl(root / "in" / "a.jsonl", ROWS)
    spec = write_spec(root / "c.yaml", [{"path": "in"}], eval_fraction=0.2)
    prepare(spec, str(root / "data"), workers=1)
    return root / "data"


# --- ablate data prepare -------------------------------------------------------------------------


def _corpus(tmp, rows=ROWS, name="a.jsonl", **source):
    write_jsonl(tmp / "in" / name, rows)
    return write_spec(tmp / "c.yaml", [{"path": "in", **source}])


def _raw(tmp, data: bytes, name="a.jsonl", **source):
    os.makedirs(tmp / "in", exist_ok=True)
    (tmp / "in" / name).write_bytes(data)
    return write_spec(tmp / "c.yaml", [{"path": "in", **source}])


def _with_output(tmp, prepared, extra=None):
    """The case's corpus, and a copy of a prepared output at ``out`` (plus ``extra`` files)."""
    spec = _corpus(tmp)
    shutil.copytree(prepared, tmp / "out")
    for rel, text in (extra or {}).items():
        os.makedirs(os.path.dirname(tmp / "out" / rel), exist_ok=True)
        (tmp / "out" / rel).write_text(text)
    return spec


def _p(spec, out, *flags):
    return ["data", "prepare", spec, "--out", out, "--workers", "1", *flags]


def out_is_input(tmp, prepared):
    return _p(_corpus(tmp), tmp / "in", "--overwrite")


def out_is_input_without_overwrite(tmp, prepared):
    return _p(_corpus(tmp), tmp / "in")


def out_inside_input(tmp, prepared):
    return _p(_corpus(tmp), tmp / "in" / "prepared")


def out_contains_input(tmp, prepared):
    return _p(_corpus(tmp), tmp, "--overwrite")


def out_is_a_link_to_input(tmp, prepared):
    spec = _corpus(tmp)
    os.symlink(tmp / "in", tmp / "link")
    return _p(spec, tmp / "link", "--overwrite")


def input_is_a_link_into_out(tmp, prepared):
    os.makedirs(tmp / "out")
    write_jsonl(tmp / "out" / "a.jsonl", ROWS)
    os.symlink(tmp / "out", tmp / "in")
    return _p(write_spec(tmp / "c.yaml", [{"path": "in"}]), tmp / "out", "--overwrite")


def out_inside_glob_root(tmp, prepared):
    write_jsonl(tmp / "in" / "a.jsonl", ROWS)
    return _p(write_spec(tmp / "c.yaml", [{"path": "in/*.jsonl"}]), tmp / "in" / "out")


def overwrite_foreign_file(tmp, prepared):
    return _p(_with_output(tmp, prepared, {"notes.txt": "mine"}), tmp / "out", "--overwrite")


def overwrite_foreign_file_deep(tmp, prepared):
    return _p(_with_output(tmp, prepared, {"in/extra.bin": "mine"}), tmp / "out", "--overwrite")


def overwrite_foreign_symlink(tmp, prepared):
    spec = _with_output(tmp, prepared)
    os.symlink(tmp / "in", tmp / "out" / "corpus")
    return _p(spec, tmp / "out", "--overwrite")


def overwrite_dir_without_manifest(tmp, prepared):
    spec = _corpus(tmp)
    os.makedirs(tmp / "out")
    (tmp / "out" / "notes.txt").write_text("mine")
    return _p(spec, tmp / "out", "--overwrite")


def overwrite_damaged_manifest(tmp, prepared):
    spec = _with_output(tmp, prepared)
    (tmp / "out" / "manifest.json").write_text("{half a manifest")
    return _p(spec, tmp / "out", "--overwrite")


def different_dataset_without_overwrite(tmp, prepared):
    _with_output(tmp, prepared)
    return _p(write_spec(tmp / "c2.yaml", [{"path": "in", "domain": "general"}]), tmp / "out")


def out_is_a_file(tmp, prepared):
    spec = _corpus(tmp)
    (tmp / "out").write_text("x")
    return _p(spec, tmp / "out")


def out_parent_is_a_file(tmp, prepared):
    spec = _corpus(tmp)
    (tmp / "file").write_text("x")
    return _p(spec, tmp / "file" / "out")


def workers_zero(tmp, prepared):
    return ["data", "prepare", _corpus(tmp), "--out", tmp / "out", "--workers", "0"]


def workers_negative(tmp, prepared):
    return ["data", "prepare", _corpus(tmp), "--out", tmp / "out", "--workers", "-3"]


def dangling_symlink(tmp, prepared):
    spec = _corpus(tmp)
    os.symlink(tmp / "gone.jsonl", tmp / "in" / "b.jsonl")
    return _p(spec, tmp / "out")


def symlink_loop(tmp, prepared):
    spec = _corpus(tmp)
    os.symlink("b.jsonl", tmp / "in" / "b.jsonl")
    return _p(spec, tmp / "out")


def json_array_pretty(tmp, prepared):
    return _p(_raw(tmp, json.dumps(ROWS[:3], indent=2).encode(), name="a.json"), tmp / "out")


def json_array_one_line(tmp, prepared):
    return _p(_raw(tmp, json.dumps(ROWS[:3]).encode() + b"\n", name="a.json"), tmp / "out")


def json_object_pretty(tmp, prepared):
    return _p(_raw(tmp, json.dumps(ROWS[0], indent=2).encode(), name="a.json"), tmp / "out")


def gz_json_array(tmp, prepared):
    return _p(
        _raw(tmp, gzip.compress(json.dumps(ROWS[:3], indent=1).encode()), name="a.jsonl.gz"),
        tmp / "out",
    )


def byte_order_mark(tmp, prepared):
    return _p(_raw(tmp, b"\xef\xbb\xbf" + json.dumps(ROWS[0]).encode() + b"\n"), tmp / "out")


def invalid_utf8(tmp, prepared):
    return _p(
        _raw(
            tmp, b'{"text": "ok", "domain": "general"}\n{"text": "caf\xe9", "domain": "general"}\n'
        ),
        tmp / "out",
    )


def empty_file(tmp, prepared):
    return _p(_raw(tmp, b""), tmp / "out")


def blank_lines_only(tmp, prepared):
    return _p(_raw(tmp, b"\n \n\n"), tmp / "out")


def directory_without_corpus_files(tmp, prepared):
    return _p(_raw(tmp, b"hello", name="notes.txt"), tmp / "out")


def not_gzip(tmp, prepared):
    return _p(_raw(tmp, b"plain text, not gzip", name="a.jsonl.gz"), tmp / "out")


def row_not_an_object(tmp, prepared):
    return _p(_raw(tmp, b'{"text": "a", "domain": "general"}\n"a string"\n'), tmp / "out")


def text_not_a_string(tmp, prepared):
    return _p(_corpus(tmp, rows=[{"text": 5, "domain": "general"}]), tmp / "out")


def text_field_missing(tmp, prepared):
    return _p(_corpus(tmp, rows=[{"body": "x", "domain": "general"}]), tmp / "out")


def unknown_row_domain(tmp, prepared):
    return _p(_corpus(tmp, rows=[{"text": "x", "domain": "x" * 500}]), tmp / "out")


def bad_parquet(tmp, prepared):
    return _p(_raw(tmp, b"PAR1 not really", name="a.parquet", domain="general"), tmp / "out")


def line_not_json(tmp, prepared):
    return _p(_raw(tmp, b'{"text": "a", "domain": "general"}\n{oops}\n'), tmp / "out")


def spec_missing(tmp, prepared):
    return _p(tmp / "nope.yaml", tmp / "out")


PREPARE_CASES = [
    (
        out_is_input,
        ("c.yaml: sources[0].path", "'in'", "is the --out directory", "outside every input"),
    ),
    (out_is_input_without_overwrite, ("sources[0].path", "is the --out directory")),
    (out_inside_input, ("sources[0].path", "contains --out")),
    (out_contains_input, ("sources[0].path", "is inside --out")),
    (out_is_a_link_to_input, ("sources[0].path", "is the --out directory")),
    (input_is_a_link_into_out, ("sources[0].path", "is the --out directory")),
    (out_inside_glob_root, ("sources[0].path", "'in/*.jsonl'", "contains --out")),
    (
        overwrite_foreign_file,
        ("--overwrite", "'notes.txt'", "was not written by 'ablate data prepare'"),
    ),
    (overwrite_foreign_file_deep, ("--overwrite", "'in/extra.bin'", "was not written")),
    (overwrite_foreign_symlink, ("--overwrite", "'corpus'", "was not written")),
    (overwrite_dir_without_manifest, ("holds no manifest.json", "'notes.txt'")),
    (overwrite_damaged_manifest, ("manifest.json", "not valid JSON", "remove it yourself")),
    (different_dataset_without_overwrite, ("already holds a different dataset", "--overwrite")),
    (out_is_a_file, ("exists and is not a directory",)),
    (out_parent_is_a_file, ("file: not a directory", "--out")),
    (workers_zero, ("--workers: must be >= 1",)),
    (workers_negative, ("--workers: must be >= 1",)),
    (dangling_symlink, ("b.jsonl: broken symbolic link", "gone.jsonl")),
    (symlink_loop, ("b.jsonl: broken symbolic link",)),
    (json_array_pretty, ("a.json: expected JSON Lines", "a JSON array")),
    (json_array_one_line, ("a.json: expected JSON Lines", "array of objects on one line")),
    (
        json_object_pretty,
        ("a.json: expected JSON Lines", "one JSON object spread over several lines"),
    ),
    (gz_json_array, ("a.jsonl.gz: expected JSON Lines", "a JSON array")),
    (byte_order_mark, ("a.jsonl: starts with a UTF-8 byte-order mark",)),
    (invalid_utf8, ("a.jsonl: line 2", "invalid UTF-8")),
    (empty_file, ("a.jsonl: empty file",)),
    (blank_lines_only, ("a.jsonl: empty file",)),
    (directory_without_corpus_files, ("sources[0].path", "holds no .jsonl")),
    (not_gzip, ("a.jsonl.gz: not a readable gzip file",)),
    (row_not_an_object, ("a.jsonl: line 2", "expected a JSON object, got str")),
    (text_not_a_string, ("a.jsonl: line 1", "field 'text' must be a string, got int")),
    (text_field_missing, ("a.jsonl: line 1", "missing text field 'text'", "body")),
    (unknown_row_domain, ("a.jsonl: line 1", "field 'domain'", "is not a known domain")),
    (bad_parquet, ("a.parquet: not a readable Parquet file",)),
    (line_not_json, ("a.jsonl: line 2", "not valid JSON")),
    (spec_missing, ("nope.yaml: no such corpora YAML",)),
]


@pytest.mark.parametrize(
    "setup, fragments", PREPARE_CASES, ids=[c[0].__name__ for c in PREPARE_CASES]
)
def test_prepare_refuses(tmp_path, prepared, capsys, setup, fragments):
    argv = setup(tmp_path, prepared)
    assert_refused(argv, *fragments, watch=(tmp_path, prepared), capsys=capsys)


# --- ablate data inspect [--verify] --------------------------------------------------------------


def _edit(path: str, change) -> None:
    with open(path, encoding="utf-8") as f:
        body = json.load(f)
    change(body)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(body, f)


def _set(*keys_and_value):
    *keys, value = keys_and_value

    def change(body):
        for k in keys[:-1]:
            body = body[k]
        body[keys[-1]] = value

    return change


def _drop(*keys):
    def change(body):
        for k in keys[:-1]:
            body = body[k]
        del body[keys[-1]]

    return change


def _text(text: bytes):
    def damage(out):
        (out / "manifest.json").write_bytes(text)

    return damage


def _manifest(change):
    def damage(out):
        _edit(str(out / "manifest.json"), change)

    return damage


def _dataset_file(ext, how):
    def damage(out):
        body = json.loads((out / "manifest.json").read_text())
        path = out / (body["datasets"][0]["prefix"] + ext)
        if how == "remove":
            path.unlink()
        elif how == "truncate":
            path.write_bytes(path.read_bytes()[:-2])
        else:  # flip one bit: same size, different content
            data = bytearray(path.read_bytes())
            data[0] ^= 1
            path.write_bytes(bytes(data))

    return damage


def _no_manifest(out):
    (out / "manifest.json").unlink()


def _manifest_is_a_directory(out):
    (out / "manifest.json").unlink()
    (out / "manifest.json").mkdir()


INSPECT_CASES = [
    ("not_json", _text(b"{not json"), ("manifest.json", "not valid JSON")),
    ("invalid_utf8", _text(b'{"format": "\xff"}'), ("manifest.json", "not valid JSON")),
    ("empty", _text(b""), ("manifest.json", "not valid JSON")),
    (
        "a_json_list",
        _text(b"[1, 2]"),
        ("manifest.json: format", "not an ablate manifest", "JSON list"),
    ),
    (
        "wrong_format",
        _manifest(_set("format", "ablate.manifest/0")),
        ("format", "'ablate.manifest/0'"),
    ),
    ("no_manifest", _no_manifest, ("manifest not found", "ablate data prepare")),
    ("manifest_is_a_directory", _manifest_is_a_directory, ("manifest not found",)),
    ("datasets_missing", _manifest(_drop("datasets")), ("manifest.json: datasets: missing",)),
    ("datasets_not_a_list", _manifest(_set("datasets", {"a": 1})), ("datasets:", "must be a list")),
    (
        "entry_not_a_mapping",
        _manifest(_set("datasets", 0, "x")),
        ("datasets[0]:", "must be a mapping"),
    ),
    (
        "tokens_a_string",
        _manifest(_set("datasets", 0, "tokens", "12")),
        ("manifest.json: datasets[0].tokens: '12' must be an integer >= 0",),
    ),
    (
        "tokens_a_bool",
        _manifest(_set("datasets", 0, "tokens", True)),
        ("datasets[0].tokens", "True"),
    ),
    (
        "tokens_a_float",
        _manifest(_set("datasets", 0, "tokens", 1.5)),
        ("datasets[0].tokens", "1.5"),
    ),
    (
        "documents_negative",
        _manifest(_set("datasets", 0, "documents", -1)),
        ("datasets[0].documents", "-1"),
    ),
    (
        "bytes_null",
        _manifest(_set("eval_datasets", 0, "bytes", None)),
        ("eval_datasets[0].bytes", "None"),
    ),
    (
        "dtype_bogus",
        _manifest(_set("datasets", 0, "dtype", "float128")),
        ("datasets[0].dtype", "'float128' is not a token dtype", "allowed: uint16, int32"),
    ),
    ("dtype_missing", _manifest(_drop("datasets", 0, "dtype")), ("datasets[0].dtype: missing",)),
    (
        "fingerprint_missing",
        _manifest(_drop("datasets", 0, "fingerprint")),
        ("datasets[0].fingerprint: missing",),
    ),
    (
        "prefix_absolute",
        _manifest(_set("datasets", 0, "prefix", "/etc/passwd")),
        ("datasets[0].prefix", "inside the data directory"),
    ),
    (
        "prefix_climbs_out",
        _manifest(_set("datasets", 0, "prefix", "../../x")),
        ("datasets[0].prefix", "no '..'"),
    ),
    (
        "prefix_a_number",
        _manifest(_set("datasets", 0, "prefix", 3)),
        ("datasets[0].prefix", "must be"),
    ),
    (
        "split_swapped",
        _manifest(_set("datasets", 0, "split", "eval")),
        ("datasets[0].split", "does not belong in datasets"),
    ),
    (
        "domain_unknown",
        _manifest(_set("datasets", 0, "domain", "cooking")),
        ("datasets[0].domain", "'cooking' is not a known domain"),
    ),
    (
        "entry_tokenizer_differs",
        _manifest(_set("datasets", 0, "tokenizer", "other-v9")),
        ("datasets[0].tokenizer", "other-v9"),
    ),
    ("tokenizer_missing", _manifest(_drop("tokenizer")), ("manifest.json: tokenizer: missing",)),
    (
        "tokenizer_not_a_mapping",
        _manifest(_set("tokenizer", "byte")),
        ("tokenizer:", "must be a mapping"),
    ),
    (
        "tokenizer_kind_bogus",
        _manifest(_set("tokenizer", "kind", "sentencepiece")),
        ("tokenizer.kind", "allowed: byte, hf"),
    ),
    (
        "tokenizer_fingerprint_missing",
        _manifest(_drop("tokenizer", "fingerprint")),
        ("tokenizer.fingerprint: missing",),
    ),
    (
        "vocab_size_a_string",
        _manifest(_set("tokenizer", "vocab_size", "258")),
        ("tokenizer.vocab_size", "'258'"),
    ),
    (
        "vocab_size_zero",
        _manifest(_set("tokenizer", "vocab_size", 0)),
        ("tokenizer.vocab_size", ">= 1"),
    ),
    (
        "eod_beyond_vocab",
        _manifest(_set("tokenizer", "eod", 9999)),
        ("tokenizer.eod", "below vocab_size"),
    ),
    ("hf_without_path", _manifest(_set("tokenizer", "kind", "hf")), ("tokenizer.path: missing",)),
    (
        "seed_a_string",
        _manifest(_set("seed", "1234")),
        ("manifest.json: seed", "must be an integer"),
    ),
    ("domains_not_a_list", _manifest(_set("domains", "general")), ("domains", "must be a list")),
    (
        "domains_bad_tag",
        _manifest(_set("domains", ["Not A Tag"])),
        ("domains[0]", "not a valid domain tag"),
    ),
    ("probes_not_a_mapping", _manifest(_set("probes", [1])), ("probes", "must be a mapping")),
    (
        "probe_path_escapes",
        _manifest(_set("probes", {"p": {"path": "/tmp/x", "count": 1}})),
        ("probes.p.path", "inside the data directory"),
    ),
    (
        "probe_count_a_string",
        _manifest(_set("probes", {"p": {"path": "p.jsonl", "count": "9"}})),
        ("probes.p.count", "'9'"),
    ),
    (
        "huge_value_is_bounded",
        _manifest(_set("datasets", 0, "dtype", "u" * 100_000)),
        ("datasets[0].dtype", "..."),
    ),
]

VERIFY_CASES = [
    ("bin_missing", _dataset_file(".bin", "remove"), (".bin is missing",)),
    ("idx_missing", _dataset_file(".idx", "remove"), (".idx is missing",)),
    ("bin_truncated", _dataset_file(".bin", "truncate"), ("files no longer match the manifest",)),
    ("idx_changed", _dataset_file(".idx", "flip"), ("files no longer match the manifest",)),
    ("bin_changed", _dataset_file(".bin", "flip"), ("no longer match their fingerprint",)),
]


@pytest.mark.parametrize(
    "damage, fragments", [c[1:] for c in INSPECT_CASES], ids=[c[0] for c in INSPECT_CASES]
)
def test_inspect_refuses_a_damaged_manifest(tmp_path, prepared, capsys, damage, fragments):
    out = tmp_path / "data"
    shutil.copytree(prepared, out)
    damage(out)
    for flags in ((), ("--verify",)):
        assert_refused(
            ["data", "inspect", out, *flags], *fragments, watch=(tmp_path, prepared), capsys=capsys
        )


@pytest.mark.parametrize(
    "damage, fragments", [c[1:] for c in VERIFY_CASES], ids=[c[0] for c in VERIFY_CASES]
)
def test_inspect_verify_refuses_damaged_dataset_files(
    tmp_path, prepared, capsys, damage, fragments
):
    out = tmp_path / "data"
    shutil.copytree(prepared, out)
    damage(out)
    assert_refused(
        ["data", "inspect", out / "manifest.json", "--verify"],
        "manifest.json",
        *fragments,
        watch=(tmp_path, prepared),
        capsys=capsys,
    )


def test_compile_reads_manifests_through_the_same_checks(tmp_path, prepared):
    """``load_manifest`` is what compile and training use: a damaged field is one line there too."""
    from ablate.data.manifest import load_manifest
    from ablate.errors import AblateError

    out = tmp_path / "data"
    shutil.copytree(prepared, out)
    _edit(str(out / "manifest.json"), _set("datasets", 0, "tokens", "12"))
    with pytest.raises(AblateError, match=r"datasets\[0\]\.tokens: '12' must be an integer"):
        load_manifest(str(out))
