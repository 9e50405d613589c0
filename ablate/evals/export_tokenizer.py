"""The run's tokenizer as a Hugging Face ``PreTrainedTokenizerFast`` (for ``ablate export hf``).

The byte tokenizer becomes a byte-level BPE with no merges over GPT-2's printable byte alphabet,
so ids are the bytes themselves; a ``tokenizer.json`` run exports that file. Either way the
end-of-document id is ``eos`` and the padding id ``pad``, and encoding is exactly the run's
(tests/test_export_tokenizer.py round-trips text through both).
"""

from __future__ import annotations

import os

from ablate.errors import AblateError


def hf_tokenizer(tokenizer, where: str = "tokenizer"):
    """A ``PreTrainedTokenizerFast`` that encodes exactly as the run's tokenizer (byte or
    ``tokenizer.json``), with its end-of-document token as ``eos`` and its padding token."""
    from transformers import PreTrainedTokenizerFast

    if tokenizer.kind == "byte":
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers

        alphabet = _bytes_to_unicode()
        tok = Tokenizer(models.BPE(vocab={alphabet[b]: b for b in range(256)}, merges=[]))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tok.decoder = decoders.ByteLevel()
        eos, pad = "<|endoftext|>", "<pad>"
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, pad_token=pad)
        fast.add_special_tokens({"eos_token": eos, "pad_token": pad})
        if (
            fast.convert_tokens_to_ids(eos) != tokenizer.eod
            or fast.convert_tokens_to_ids(pad) != tokenizer.pad
        ):
            raise AblateError(
                f"{where}: the byte tokenizer's special ids did not map to {tokenizer.eod}, "
                f"{tokenizer.pad}"
            )
        return fast
    path = getattr(tokenizer, "path", None)
    if not path or not os.path.isfile(path):
        raise AblateError(
            f"{where}: the run's tokenizer ({tokenizer.kind}) has no tokenizer.json to export"
        )
    fast = PreTrainedTokenizerFast(tokenizer_file=path)
    vocab = fast.get_vocab()
    by_id = {i: t for t, i in vocab.items()}
    fast.add_special_tokens({"eos_token": by_id[tokenizer.eod], "pad_token": by_id[tokenizer.pad]})
    return fast


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (what the ByteLevel pre-tokenizer emits)."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}
