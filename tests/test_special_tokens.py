"""Special tokens of tokenizer files without tokenizer.json (vocab.json + merges.txt), as transformers has
them (reference.programs.tokenizers.BPETokenizer.from_dir): GPT-2's <|endoftext|>, and the added and special
tokens of added_tokens.json, special_tokens_map.json and tokenizer_config.json. The oracle is transformers'
AutoTokenizer (GPT2Tokenizer for model_type gpt2) on the same files: the same ids, the same vocabulary
size, the same text back, on text that contains the special tokens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

tokenizers = pytest.importorskip("tokenizers", reason="the hf extra (tokenizers) is not installed")
transformers = pytest.importorskip("transformers", reason="the hf extra (transformers) is not installed")

from reference.programs.tokenizers import BPETokenizer  # noqa: E402

transformers.logging.set_verbosity_error()
CORPUS = ["First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"] * 20
TEXTS = ["Speak<|endoftext|>All: hear<|endoftext|>", "<|endoftext|>",
         "a<|pad|>b <|im_start|>user\nhi<|im_end|> <|user|>x<|endoftext|><|endoftext|>",
         "<|endoftext", "First Citizen:\nBefore we proceed"]


def files(path: Path, *, in_vocab: bool, extra: dict) -> Path:
    """vocab.json + merges.txt of a small byte-level BPE (with <|endoftext|> as its last id, as GPT-2's,
    or without it), config.json naming GPT-2, and the extra tokenizer files given."""
    tok = tokenizers.ByteLevelBPETokenizer()
    tok.train_from_iterator(CORPUS, vocab_size=300, min_frequency=1, show_progress=False)
    path.mkdir()
    tok.save_model(str(path))
    if in_vocab:
        vocab = json.loads((path / "vocab.json").read_text())
        vocab["<|endoftext|>"] = len(vocab)
        (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    for name, d in extra.items():
        (path / name).write_text(json.dumps(d))
    return path


CASES = {
    "gpt2": (True, {}),
    "no-endoftext-in-vocab": (False, {}),
    "added_tokens.json": (True, {"added_tokens.json": {"<|pad|>": 301, "<|im_start|>": 302}}),
    "special_tokens_map.json": (True, {"special_tokens_map.json": {
        "pad_token": "<|pad|>", "additional_special_tokens": ["<|im_start|>", "<|im_end|>"]}}),
    "tokenizer_config.json": (False, {"tokenizer_config.json": {
        "added_tokens_decoder": {"300": {"content": "<|user|>", "special": True, "lstrip": False, "rstrip": False,
                                         "normalized": False, "single_word": False},
                                 "301": {"content": "<|pad|>", "special": False}},
        "pad_token": "<|pad|>", "eos_token": "<|im_end|>"}}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_ids_as_transformers_has_them(tmp_path, case):
    """Before: <|endoftext|> became 3 to 7 ordinary tokens, and the vocabulary had no added tokens."""
    in_vocab, extra = CASES[case]
    d = files(tmp_path / "tok", in_vocab=in_vocab, extra=extra)
    theirs = transformers.AutoTokenizer.from_pretrained(d)
    ours = BPETokenizer.from_dir(d)
    assert ours.vocab_size == len(theirs), case
    for text in TEXTS:
        ids = ours.encode(text).tolist()
        assert ids == theirs.encode(text), (case, text)
        assert ours.decode(ids) == text
    assert ours.encode("<|endoftext|>").tolist() == [theirs.convert_tokens_to_ids("<|endoftext|>")]


def test_a_corpus_of_documents_keeps_its_separators(tmp_path):
    d = files(tmp_path / "tok", in_vocab=True, extra={})
    ours = BPETokenizer.from_dir(d)
    eot = ours.vocab_size - 1
    ids = ours.encode("<|endoftext|>".join(CORPUS[:3])).tolist()
    assert ids.count(eot) == 2


def test_contradicting_ids_are_refused(tmp_path):
    d = files(tmp_path / "tok", in_vocab=True, extra={"added_tokens.json": {"<|pad|>": 305}})
    with pytest.raises(ValueError, match=r"the added token '<\|pad\|>' has id 305 in the tokenizer files, but 301"):
        BPETokenizer.from_dir(d)
    (d / "added_tokens.json").write_text("[1]")
    with pytest.raises(ValueError, match="added_tokens.json: expected a JSON object"):
        BPETokenizer.from_dir(d)
