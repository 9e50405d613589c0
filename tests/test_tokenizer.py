import numpy as np
import pytest

from ablate.data.tokenizer import ByteTokenizer, HFTokenizer, Tokenizer, load_tokenizer
from ablate.errors import AblateError

from conftest import SAMPLE_TEXTS


def test_byte_tokenizer_round_trips_unicode():
    tok = ByteTokenizer()
    for text in SAMPLE_TEXTS:
        ids = tok.encode(text)
        assert len(ids) == len(text.encode("utf-8"))
        assert tok.decode(ids) == text
    assert tok.vocab_size == 258 and tok.eod == 256 and tok.dtype == np.uint16


@pytest.mark.parametrize("kind", ["byte", "hf"])
def test_batched_encoding_equals_the_one_document_reference(kind, bpe_tokenizer_json):
    tok = ByteTokenizer() if kind == "byte" else HFTokenizer(bpe_tokenizer_json)
    texts = SAMPLE_TEXTS * 3 + ["", "a"]
    tokens, lengths = tok.encode_documents(texts)
    ref_tokens, ref_lengths = Tokenizer.encode_documents(tok, texts)  # the per-document base loop
    assert tokens.dtype == ref_tokens.dtype
    np.testing.assert_array_equal(tokens, ref_tokens)
    np.testing.assert_array_equal(lengths, ref_lengths)
    assert int(lengths.sum()) == tokens.size
    assert (tokens[np.cumsum(lengths) - 1] == tok.eod).all()


def test_hf_tokenizer_is_loaded_from_a_local_file_with_a_content_fingerprint(
    bpe_tokenizer_json, tmp_path
):
    tok = load_tokenizer(bpe_tokenizer_json)
    assert tok.kind == "hf" and tok.eod == 0
    assert tok.decode(tok.encode(SAMPLE_TEXTS[0])) == SAMPLE_TEXTS[0]
    assert tok.fingerprint == HFTokenizer(bpe_tokenizer_json).fingerprint
    assert tok.fingerprint != ByteTokenizer().fingerprint
    changed = tmp_path / "tokenizer.json"
    changed.write_text(open(bpe_tokenizer_json).read().replace('"<pad>"', '"<padding>"'))
    assert HFTokenizer(str(changed)).fingerprint != tok.fingerprint


def test_tokenizer_errors_are_clear(tmp_path, bpe_tokenizer_json):
    with pytest.raises(AblateError, match="tokenizer file .*missing.json' does not exist"):
        load_tokenizer(str(tmp_path / "missing.json"))
    with pytest.raises(AblateError, match="no end-of-document token"):
        load_tokenizer({"kind": "hf", "path": bpe_tokenizer_json, "eod_token": "<nope>"})
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(AblateError, match="not a readable tokenizer.json"):
        load_tokenizer(str(bad))
    with pytest.raises(AblateError, match="not a tokenizer kind"):
        load_tokenizer({"kind": "sentencepiece", "path": "x"})
