"""SFT and DPO data prepared exactly as TRL prepares them (reference/programs/sft.py, dpo.py, data/prepare.py):
our token ids and loss masks equal TRL's SFTTrainer processed dataset (input_ids, labels) and our
(prompt, chosen, rejected) ids equal TRL's DPOTrainer's (prompt_ids, chosen_ids, rejected_ids), on tiny
GPT-2 directories built offline, for examples whose BPE merges cross the prompt/response boundary, unicode,
a response that already ends with the eos token, `{"messages": [...]}` rendered with a directory's chat
template and with ours, and a tokenizer whose post-processor adds a BOS. Planted bugs (prompt and response
tokenised apart, no eos, the mask cut at the response's own length) are reported as mismatches."""

from __future__ import annotations

import json
import logging
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
datasets = pytest.importorskip("datasets")
trl = pytest.importorskip("trl")

# TRL 1.13's SFTConfig/DPOConfig still pass transformers 5.23 the old name; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:`gradient_checkpointing` is deprecated:FutureWarning")

from reference.programs import dpo, sft  # noqa: E402
from reference.programs.chat_template import ChatTemplate  # noqa: E402
from reference.programs.tokenizers import BPETokenizer, ByteTokenizer, CharTokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "data"))
sys.path.insert(0, str(ROOT / "tests"))
import prepare  # noqa: E402
from test_bpe import make_bpe_files  # noqa: E402
from test_chat_template import CHATML, model_dir  # noqa: E402

# Our template (sft.CHAT_TEMPLATE + sft.ASSISTANT_PREFIX) as a Jinja chat template, so that TRL can render it.
OURS_JINJA = ("{% for m in messages %}{{ '<|' + m['role'] + '|>\n' + m['content'] + '\n' }}{% endfor %}"
              "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}")

# Prompt/response pairs with tricky boundaries for a BPE trained on test_bpe.CORPUS: a word cut in two
# ("Spe" + "ak"), no space between them, a merge of the prompt's last token with the response's first
# ("日本" + "語"), a newline on each side, emoji with a modifier, a response
# that already ends with the eos token, and an empty response (the eos token alone).
EXAMPLES = [("First Citizen:", "\nBefore we proceed"), ("Spe", "ak, speak."), ("hear me speak.\n", "\nAll:"),
            ("naïve café, 日本", "語のテキスト"), ("emoji 😀", "👍🏽 tabs"), ("All:", " Speak<|endoftext|>"),
            ("Before", "")]
CONVERSATIONS = [
    [{"role": "user", "content": "Speak"}, {"role": "assistant", "content": "\n\nAll: speak."}],
    [{"role": "system", "content": "naïve"}, {"role": "user", "content": "café"},
     {"role": "assistant", "content": "日本語 😀"}],
    [{"role": "user", "content": "First"}, {"role": "assistant", "content": "Citizen"},
     {"role": "user", "content": "hear me"}, {"role": "assistant", "content": "speak, speak"}],
    [{"role": "user", "content": "日本"}, {"role": "assistant", "content": "語のテキスト"}],
]
# The messages' contents one after another: a response that merges with the prompt's last token ("日本" + "語").
PLAIN_JINJA = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
PAIRS = [("Spe", "ak, speak.", "ak, hear me speak."), ("First Citizen", ":\nBefore", "Citizen:"), ("日本", "語のテキスト", "語"),
         ("All:\n", "\nSpeak", "Speak<|endoftext|>")]


def tiny_gpt2(vocab_size: int):
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=vocab_size, n_positions=64, n_embd=8,
                                                                n_layer=1, n_head=2))


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """Three tokenizer directories: GPT-2's vocab.json + merges.txt pair (eos <|endoftext|>, no BOS added), a
    transformers-saved BPE with the ChatML template (eos </s>), and that one with a post-processor adding <s>."""
    root = tmp_path_factory.mktemp("trl")
    gpt2 = make_bpe_files(root / "gpt2")
    transformers.GPT2Config().save_pretrained(gpt2)              # model_type gpt2: AutoTokenizer's GPT2Tokenizer
    chat = model_dir(root / "chatml", CHATML)
    bos = root / "bos"
    shutil.copytree(chat, bos)
    tk = tokenizers.Tokenizer.from_file(str(bos / "tokenizer.json"))
    tk.post_processor = tokenizers.processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tk.token_to_id("<s>"))])
    tk.save(str(bos / "tokenizer.json"))
    for d in (gpt2, chat, bos):                                   # the weights TRL's trainers load
        tiny_gpt2(len(transformers.AutoTokenizer.from_pretrained(d))).save_pretrained(d)
    return {"gpt2": gpt2, "chatml": chat, "bos": bos}


def trl_tokenizer(d: Path, template: str | None = None):
    tok = transformers.AutoTokenizer.from_pretrained(d)
    if template is not None:
        tok.chat_template = template
    return tok


def trl_processed(trainer, config, tok, rows, caplog):
    """TRL's `trainer` (SFTTrainer, DPOTrainer) built on `rows`: its processed train dataset, and how many rows
    it warned about (its "Mismatch between tokenized prompt" message)."""
    caplog.clear()
    with caplog.at_level(logging.WARNING), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = trainer(model=tok.name_or_path, args=config, processing_class=tok,
                    train_dataset=datasets.Dataset.from_list(rows))
    return t.train_dataset, sum("Mismatch between tokenized prompt" in r.getMessage() for r in caplog.records)


def trl_sft(tok, rows, tmp_path, caplog):
    """TRL's SFTTrainer's processed train dataset: [(input_ids, labels)], and the rows it warned about."""
    config = trl.SFTConfig(output_dir=str(tmp_path / "trl"), report_to=[], packing=False, max_length=None,
                           use_cpu=True, disable_tqdm=True)
    data, warned = trl_processed(trl.SFTTrainer, config, tok, rows, caplog)
    return [(r["input_ids"], r["labels"]) for r in data], warned


def trl_dpo(tok, rows, tmp_path, caplog):
    """TRL's DPOTrainer's processed train dataset: [(prompt_ids, chosen_ids, rejected_ids)], and its warnings."""
    config = trl.DPOConfig(output_dir=str(tmp_path / "trl"), report_to=[], use_cpu=True, disable_tqdm=True)
    data, warned = trl_processed(trl.DPOTrainer, config, tok, rows, caplog)
    return [(r["prompt_ids"], r["chosen_ids"], r["rejected_ids"]) for r in data], warned


def ours_sft(examples, tok):
    """Our examples as TRL's rows: [(input_ids, labels)] from sft.encode_examples, and the examples warned about."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ids, mask, lengths = sft.encode_examples(examples, tok)
    rows, s = [], 0
    for n in lengths.tolist():
        i, m = ids[s:s + n], mask[s:s + n]
        rows.append((i.tolist(), np.where(m == 1, i, -100).tolist()))
        s += n
    return rows, caught


def mismatches(ours, theirs) -> list[int]:
    """Indices of the examples whose ids or mask differ from TRL's."""
    assert len(ours) == len(theirs)
    return [k for k, (a, b) in enumerate(zip(ours, theirs)) if [list(x) for x in a] != [list(x) for x in b]]


def separate(examples, tok):
    """Planted bug: prompt and response each tokenised on its own, ids concatenated."""
    rows = []
    for p, r, *_ in examples:
        pi, ri = tok.encode(p).tolist(), tok.encode(r).tolist()
        rows.append((pi + ri, [-100] * len(pi) + ri))
    return rows


def response_length_mask(examples, tok):
    """Planted bug: joint ids, but the mask counts the response's own number of tokens from the end."""
    rows = []
    for p, r, *_ in examples:
        ids, n = sft.encode_text(tok, p + r).tolist(), len(tok.encode(r))
        rows.append((ids, [-100] * (len(ids) - n) + ids[len(ids) - n:]))
    return rows


@pytest.mark.parametrize("name", ["gpt2", "bos"])
def test_sft_prompt_response_ids_and_mask_equal_trl(dirs, name, tmp_path, caplog):
    d = dirs[name]
    tok, theirs_tok = BPETokenizer.from_dir(d), trl_tokenizer(d)
    eos = sft.eos_token(str(d), tok)
    assert eos == theirs_tok.eos_token == {"gpt2": "<|endoftext|>", "bos": "</s>"}[name]
    rows = [{"prompt": p, "completion": r} for p, r in EXAMPLES]
    theirs, trl_warned = trl_sft(theirs_tok, rows, tmp_path, caplog)
    examples = [(*sft.render(row, "x", eos=eos), False) for row in rows]
    ours, caught = ours_sft(examples, tok)
    assert mismatches(ours, theirs) == []
    if name == "bos":
        assert all(ids[0] == tok.encode("<s>")[0] for ids, _ in ours)        # TRL's text examples get the BOS
    # the same prompts are warned about: their ids are not a prefix of prompt + response's
    assert len(caught) == (trl_warned > 0) and trl_warned == (name == "gpt2") * 2
    if caught:
        assert str(caught[0].message).startswith("example 2, 4: the prompt's tokens are not a prefix")
    # planted bugs are reported
    if name == "gpt2":
        assert mismatches(separate(examples, tok), theirs) == [1, 3]           # "Spe" + "ak", "日本" + "語"
        assert mismatches(response_length_mask(examples, tok), theirs) == [1, 3]
    no_eos = [(*sft.render(row, "x"), False) for row in rows[:-1]]          # (the last one would be empty)
    assert mismatches(ours_sft(no_eos, tok)[0], theirs[:-1]) == [k for k in range(6) if k != 5 or name == "bos"]


@pytest.mark.parametrize("name, template", [("chatml", None), ("gpt2", OURS_JINJA), ("bos", None),
                                            ("gpt2", PLAIN_JINJA)], ids=["chatml", "ours", "bos", "plain"])
def test_sft_messages_ids_and_mask_equal_trl(dirs, name, template, tmp_path, caplog):
    """{"messages": [...]} is TRL's conversational prompt-completion example {"prompt": messages[:-1],
    "completion": messages[-1:]}: rendered by the chat template, no eos appended, no BOS added by the tokenizer."""
    d = dirs[name]
    tok, theirs_tok = BPETokenizer.from_dir(d), trl_tokenizer(d, template)
    ours_template = ChatTemplate(PLAIN_JINJA, "plain") if template == PLAIN_JINJA else ChatTemplate.from_dir(d)
    rows = [{"prompt": m[:-1], "completion": m[-1:]} for m in CONVERSATIONS]
    theirs, _ = trl_sft(theirs_tok, rows, tmp_path, caplog)
    examples = [(*sft.render({"messages": m}, "x", ours_template, eos=sft.eos_token(str(d), tok)), True)
                for m in CONVERSATIONS]
    if template is not None:                   # OURS_JINJA renders as sft.CHAT_TEMPLATE does, PLAIN_JINJA as ours
        assert [p + r for p, r, _ in examples] == [theirs_tok.apply_chat_template(m, tokenize=False)
                                                    for m in CONVERSATIONS]
    ours, _ = ours_sft(examples, tok)
    assert mismatches(ours, theirs) == []
    if template == PLAIN_JINJA:     # "日本" + "語" merges across the boundary: separate() differs
        assert mismatches(separate(examples, tok), theirs) == [2, 3]     # and "hear me" + "speak"
    if name == "bos":      # a chat example tokenised as text would get the BOS: caught
        assert mismatches(ours_sft([e[:2] for e in examples], tok)[0], theirs) == [0, 1, 2, 3]


@pytest.mark.parametrize("name, template", [("chatml", None), ("gpt2", OURS_JINJA), ("bos", None),
                                            ("gpt2", PLAIN_JINJA)], ids=["chatml", "ours", "bos", "plain"])
def test_sft_conversational_prompt_completion_equals_trl(dirs, name, template, tmp_path, caplog):
    """TRL's conversational prompt-completion form {"prompt": [msgs], "completion": [msgs]} read as written (a
    completion of several messages included), from a JSONL file: ids and labels equal TRL's processed dataset;
    no eos appended (an eos appended, as for text, is caught)."""
    d = dirs[name]
    tok, theirs_tok = BPETokenizer.from_dir(d), trl_tokenizer(d, template)
    ours_template = ChatTemplate(PLAIN_JINJA, "plain") if template == PLAIN_JINJA else ChatTemplate.from_dir(d)
    rows = [{"prompt": m[:-1], "completion": m[-1:]} for m in CONVERSATIONS]
    rows.append({"prompt": CONVERSATIONS[2][:1], "completion": CONVERSATIONS[2][1:]})    # three completion messages
    theirs, _ = trl_sft(theirs_tok, rows, tmp_path, caplog)
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    eos = sft.eos_token(str(d), tok)
    examples = sft.read_examples(path, ours_template, eos)
    assert [chat for _, _, chat in examples] == [True] * len(rows)
    assert examples[:4] == [(*sft.render({"messages": m}, "x", ours_template), True) for m in CONVERSATIONS]
    ours, _ = ours_sft(examples, tok)
    assert mismatches(ours, theirs) == []
    if eos:                                    # planted bug: the eos appended as for a text example
        with_eos = [(p, r + eos, c) for p, r, c in examples]
        assert mismatches(ours_sft(with_eos, tok)[0], theirs) == list(range(len(rows)))
    if name == "bos":                          # planted bug: tokenised as text, with the BOS
        assert mismatches(ours_sft([e[:2] for e in examples], tok)[0], theirs) == list(range(len(rows)))


@pytest.mark.parametrize("name", ["gpt2", "bos"])
def test_dpo_ids_equal_trl(dirs, name, tmp_path, caplog):
    d = dirs[name]
    tok, theirs_tok = BPETokenizer.from_dir(d), trl_tokenizer(d)
    rows = [dict(zip(dpo.KEYS, p)) for p in PAIRS]
    theirs, trl_warned = trl_dpo(theirs_tok, rows, tmp_path, caplog)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        enc = dpo.encode_pairs(PAIRS, tok, 1 << 20, eos=sft.eos_token(str(d), tok))
    ours = [tuple(a.tolist() for a in e) for e in enc]
    assert mismatches(ours, theirs) == []
    assert len(caught) == (trl_warned > 0) and (name == "bos" or trl_warned >= 2)
    # what the model is fed: make_batch's rows are TRL's collator's prompt_ids + chosen_ids / rejected_ids
    x, y = dpo.make_batch(enc, range(len(enc)))
    for row, (p, c) in enumerate([(t[0], t[1]) for t in theirs] + [(t[0], t[2]) for t in theirs]):
        n = len(p) + len(c)
        assert x[row, :n - 1].tolist() == (p + c)[:-1] and y[row, len(p) - 1:n - 1].tolist() == c
    # planted: prompt and responses tokenised apart (and no eos) is reported
    old = [tuple(tok.encode(s).tolist() for s in pair) for pair in PAIRS]
    assert mismatches(old, theirs) == list(range(len(PAIRS)))
    if name == "gpt2":
        old_eos = [(tok.encode(p).tolist(), *(tok.encode(s if s.endswith("<|endoftext|>") else s + "<|endoftext|>")
                                               .tolist() for s in (c, r))) for p, c, r in PAIRS]
        assert mismatches(old_eos, theirs) == [0, 2]                         # "Spe" + "ak", "日本" + "語"
        # where the merge eats the response (TRL would feed an empty one: "Spe" is 3 tokens, "Speak." + eos 3),
        # we refuse, one line, as for any response empty after tokenisation
        with pytest.raises(dpo.DPOError, match=r"^pair 1: the rejected response is empty after tokenisation"):
            dpo.encode_pairs([("Spe", "ak, speak.", "ak.")], tok, 64, eos="<|endoftext|>")
        with pytest.raises(sft.SFTError, match=r"^example 1: the response 'ak\.<\|endoftext\|>' is empty after"):
            sft.encode([("Spe", "ak.<|endoftext|>")], tok)


def test_prepare_writes_trls_ids_and_records_the_eos(dirs, tmp_path, caplog, capsys):
    """data/prepare.py --sft and --dpo with --tokenizer DIR: the files hold TRL's ids, masks and pairs;
    meta.json records the eos token; TRL's prefix warning is printed as one line."""
    d = dirs["gpt2"]
    f = tmp_path / "sft.jsonl"
    rows = [{"prompt": p, "response": r} for p, r in EXAMPLES[:4]] + [{"prompt": "All:", "completion": "\nSpeak"}]
    f.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    assert prepare.main(["--sft", str(f), "--tokenizer", str(d), "--out", str(tmp_path / "s")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"prepare.py: warning: {f}: train example 2, 4: ") and "not a prefix" in err[0]
    meta = json.loads((tmp_path / "s" / "meta.json").read_text())
    assert meta["sft"]["eos_token"] == "<|endoftext|>"
    theirs, _ = trl_sft(trl_tokenizer(d), [{"prompt": r["prompt"], "completion": r.get("response", r.get("completion"))}
                                           for r in rows], tmp_path, caplog)
    ids = np.concatenate([np.fromfile(tmp_path / "s" / f"{s}.bin", meta["dtype"]) for s in ("train", "val")]).astype(np.int64)
    mask = np.concatenate([np.fromfile(tmp_path / "s" / sft.MASK_FILES[s], np.uint8) for s in ("train", "val")])
    assert ids.tolist() == sum((list(i) for i, _ in theirs), [])
    assert np.where(mask == 1, ids, -100).tolist() == sum((list(lab) for _, lab in theirs), [])

    f = tmp_path / "dpo.jsonl"
    f.write_text("\n".join(json.dumps(dict(zip(dpo.KEYS, p)), ensure_ascii=False) for p in PAIRS) + "\n")
    assert prepare.main(["--dpo", str(f), "--tokenizer", str(d), "--out", str(tmp_path / "p")]) == 0
    meta = json.loads((tmp_path / "p" / "meta.json").read_text())
    assert meta["dpo"]["eos_token"] == "<|endoftext|>"
    theirs, _ = trl_dpo(trl_tokenizer(d), [dict(zip(dpo.KEYS, p)) for p in PAIRS], tmp_path, caplog)
    got = []
    for s in ("train", "val"):
        ids = np.fromfile(tmp_path / "p" / f"{s}.bin", meta["dtype"])
        got += [tuple(a.tolist() for a in e) for e in dpo.load_pairs(tmp_path / "p", s, ids)]
    assert mismatches(got, theirs) == []


@pytest.mark.parametrize("kind", ["char", "byte"])
def test_char_and_byte_have_no_merges_joint_equals_separate(kind):
    """No merges: tokenising prompt + response at once equals the prompt's ids then the response's, for the
    char and byte tokenizers; they have no eos token, so none is appended."""
    texts = [p + r for p, r in EXAMPLES]
    tok = CharTokenizer.from_text("".join(texts)) if kind == "char" else ByteTokenizer()
    assert sft.eos_token(kind, tok) is None
    ids, mask = sft.encode(EXAMPLES[:-1], tok)
    sep = separate(EXAMPLES[:-1], tok)
    assert ids.tolist() == sum((i for i, _ in sep), []) and np.where(mask == 1, ids, -100).tolist() == sum(
        (lab for _, lab in sep), [])


@pytest.mark.parametrize("row, match", [
    ({"prompt": "a", "response": "b", "completion": "b"}, r"^x: both 'response' and 'completion' \(TRL's name for the "
                                                          r"response\); expected one of them$"),
    ({"prompt": "a"}, r"^x: no 'response' key \(it has \['prompt'\]\); expected \{\"prompt\": ..., \"response\": ...\} "
                      r"\(\"completion\", TRL's name, is accepted for \"response\"\) or \{\"messages\": \[...\]\}$"),
    ({"prompt": "a", "completion": 1}, r"^x: 'completion' must be a string, got int$"),
    ({"prompt": [{"role": "user", "content": "a"}], "completion": "b"},
     r"^x: 'prompt' is a list of messages but 'completion' is a str; expected lists of messages under both \(TRL's "
     r"conversational prompt-completion form\) or strings under both$"),
    ({"prompt": [{"role": "user", "content": "a"}], "completion": [{"role": "assistant"}]},
     r"^x: \"completion\" must be a non-empty list of \{\"role\": str, \"content\": str\}$"),
])
def test_response_or_completion_one_line(row, match):
    with pytest.raises(sft.SFTError, match=match):
        sft.render(row, "x")
    assert sft.render({"prompt": "a", "completion": "b"}, "x", eos="</s>") == ("a", "b</s>")
    assert sft.render({"prompt": "a", "completion": "b</s>"}, "x", eos="</s>") == ("a", "b</s>")
    conversational = {"prompt": [{"role": "user", "content": "a"}], "completion": [{"role": "assistant", "content": "b"}]}
    assert sft.render(conversational, "x", eos="</s>") == ("<|user|>\na\n<|assistant|>\n", "b\n")   # no eos
