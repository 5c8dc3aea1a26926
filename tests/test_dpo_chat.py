"""DPO on conversations (reference/programs/dpo.py `read_pairs`, `conversation`, `encode_pairs`; data/prepare.py
--dpo): our (prompt, chosen, rejected) ids equal TRL 1.13's DPOTrainer processed dataset (prompt_ids, chosen_ids,
rejected_ids) for conversational pairs, with an explicit prompt and with the implicit one TRL's extract_prompt
finds, on a directory with the ChatML template, on our template, on a tokenizer whose post-processor adds a BOS,
and on a template whose reply merges with the prompt's last token. Planted bugs (an eos appended as for text
pairs, the generation prompt missing, the prompt extracted as all but the last message) are reported as
mismatches. Then malformed lines are refused one line each, and train --objective dpo runs on such data."""

from __future__ import annotations

import json
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("trl")
# TRL 1.13's DPOConfig still passes transformers 5.23 the old name; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:`gradient_checkpointing` is deprecated:FutureWarning")

from reference.programs import dpo, sft  # noqa: E402
from reference.programs.chat_template import ChatTemplate  # noqa: E402
from reference.programs.tokenizers import BPETokenizer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_trl_parity  # noqa: E402
from test_dpo import cli  # noqa: E402
from test_trl_parity import OURS_JINJA, PLAIN_JINJA, mismatches, prepare, trl_dpo, trl_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """test_trl_parity's three tokenizer directories (GPT-2's pair, ChatML, ChatML adding <s>), with their models."""
    return test_trl_parity.dirs.__wrapped__(tmp_path_factory)


def u(text):
    return {"role": "user", "content": text}


def a(text):
    return {"role": "assistant", "content": text}


# (prompt, chosen, rejected) messages. Replies that begin with newlines (after the generation prompt's own
# "\n"), unicode and emoji, a multi-turn prompt, a rejected reply whose text ends with an eos token (no eos is
# added either way), a reply of several messages, and "日本" + "語...", which PLAIN_JINJA merges across the
# prompt/reply boundary.
CHATS = [
    ([u("Speak")], [a("\n\nAll: speak.")], [a("Before we proceed")]),
    ([{"role": "system", "content": "naïve"}, u("café")], [a("日本語 😀")], [a("emoji 👍🏽 tabs")]),
    ([u("First"), a("Citizen"), u("hear me")], [a("speak, speak")], [a("Speak</s><|endoftext|>")]),
    ([u("日本")], [a("語のテキスト"), u("more"), a("Speak")], [a("語のテ")]),
]
# The implicit form of CHATS (TRL extracts the same prompt: the replies' first messages differ), and a pair
# whose chosen is a prefix of its rejected: extract_prompt keeps the chosen's last message as its reply.
IMPLICIT = [(p + c, p + r) for p, c, r in CHATS] + [([u("hear me"), a("Speak")],
                                                     [u("hear me"), a("Speak"), u("more"), a("café")])]
CASES = [("chatml", None), ("gpt2", OURS_JINJA), ("bos", None), ("gpt2", PLAIN_JINJA)]


def rows(form: str) -> list[dict]:
    if form == "explicit":
        return [dict(zip(dpo.KEYS, c)) for c in CHATS]
    return [{"chosen": c, "rejected": r} for c, r in IMPLICIT]


def write(path: Path, lines) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines), encoding="utf-8")
    return path


def ours(path, tok, template, eos):
    """Our ids of a JSONL file as TRL's rows, and the warnings given."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        enc = dpo.encode_pairs(dpo.read_pairs(path, template), tok, 1 << 20, eos=eos)
    return [tuple(x.tolist() for x in e) for e in enc], caught


@pytest.mark.parametrize("form", ["explicit", "implicit"])
@pytest.mark.parametrize("name, template", CASES, ids=["chatml", "ours", "bos", "plain"])
def test_conversational_pair_ids_equal_trl(dirs, name, template, form, tmp_path, caplog, monkeypatch):
    d = dirs[name]
    tok, theirs_tok = BPETokenizer.from_dir(d), trl_tokenizer(d, template)
    ours_template = {None: ChatTemplate.from_dir(d), OURS_JINJA: None, PLAIN_JINJA: ChatTemplate(PLAIN_JINJA, "plain")}[template]
    eos = sft.eos_token(str(d), tok)                  # given, and not appended: the pairs are conversational
    assert eos is not None
    theirs, trl_warned = trl_dpo(theirs_tok, rows(form), tmp_path, caplog)
    f = write(tmp_path / "p.jsonl", rows(form))
    got, caught = ours(f, tok, ours_template, eos)
    assert mismatches(got, theirs) == []
    assert len(caught) == (trl_warned > 0) and (trl_warned > 0) == (template == PLAIN_JINJA)
    if name == "bos":                                 # no BOS: tokenised as apply_chat_template(tokenize=True) does
        assert all(p[0] != tok.encode("<s>")[0] for p, _, _ in got)

    # planted: the pairs encoded as text pairs (an eos appended; the BOS added): every pair is reported
    pairs = dpo.read_pairs(f, ours_template)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        enc = dpo.encode_pairs([p[:3] for p in pairs], tok, 1 << 20, eos=eos)
    as_text = [tuple(x.tolist() for x in e) for e in enc]
    assert mismatches(as_text, theirs) == list(range(len(theirs)))
    # planted: the generation prompt missing (the assistant's header counted in the reply): every pair reported
    with monkeypatch.context() as m:
        if ours_template is None:
            m.setattr(sft, "ASSISTANT_PREFIX", "")
        else:
            render = ChatTemplate.render
            m.setattr(ChatTemplate, "render", lambda self, msgs, add_generation_prompt=False: render(self, msgs))
        no_gen = ours(f, tok, ours_template, eos)[0]
    assert mismatches(no_gen, theirs) == ([] if template == PLAIN_JINJA else list(range(len(theirs))))
    if form == "implicit":
        # planted: the prompt taken as all but the last message: the pairs whose replies are not one message each
        with monkeypatch.context() as m:
            m.setattr(dpo, "extract_prompt", lambda c, r: (c[:-1], c[-1:], r[-1:]))
            assert mismatches(ours(f, tok, ours_template, eos)[0], theirs) == [3, 4]
    if name == "chatml" and form == "explicit":       # prepare --dpo --tokenizer DIR writes the same ids
        f = write(tmp_path / "p.jsonl", rows(form) + [{"prompt": "Spe", "chosen": "ak", "rejected": "ech"}])
        assert prepare.main(["--dpo", str(f), "--tokenizer", str(d), "--out", str(tmp_path / "out")]) == 0
        meta = json.loads((tmp_path / "out" / "meta.json").read_text())
        assert meta["dpo"]["conversational_pairs"] == 4 and meta["dpo"]["chat_template"] == {
            "source": str(d / "chat_template.jinja"), "sha256": ours_template.digest}
        written = [tuple(x.tolist() for x in e) for e in dpo.load_pairs(
            tmp_path / "out", "train", np.fromfile(tmp_path / "out" / "train.bin", meta["dtype"]))]
        assert mismatches(written, theirs) == []     # the text pair (eos appended) is the val split


BAD = [
    ({"prompt": [u("a")], "chosen": [a("b")]}, r"no 'rejected' key"),
    ({"prompt": "a", "chosen": [a("b")], "rejected": [a("c")]},
     r"'prompt' must be a list of messages, as a conversational pair's \"chosen\" and \"rejected\" are, got str"),
    ({"prompt": [u("a")], "chosen": [a("b")], "rejected": "c"}, r"'rejected' must be a list of messages"),
    ({"prompt": [], "chosen": [a("b")], "rejected": [a("c")]},
     r"\"prompt\" must be a non-empty list of \{\"role\": str, \"content\": str\}"),
    ({"prompt": [u("a")], "chosen": [], "rejected": [a("c")]}, r"\"chosen\" must be a non-empty list"),
    ({"prompt": [u("a")], "chosen": [{"role": "assistant"}], "rejected": [a("c")]}, r"\"chosen\" must be a non-empty"),
    ({"prompt": [u("a")], "chosen": [{"role": 1, "content": "b"}], "rejected": [a("c")]}, r"\"chosen\" must be a"),
    ({"prompt": [u("a")], "chosen": [a("b"), u("c")], "rejected": [a("c")]},
     r"the chosen reply's last message is the 'user''s; expected the assistant's"),
    ({"prompt": [u("a")], "chosen": [a("b")], "rejected": [u("c"), a("d")]},
     r"the rejected reply's first message is the 'user''s; expected the assistant's"),
    ({"chosen": [u("a"), a("b")], "rejected": [u("x"), a("b")]},
     r"\"chosen\" and \"rejected\" begin with different messages, so they share no prompt"),
    ({"chosen": [a("b")], "rejected": [a("b")]}, r"share no prompt"),
    ({"chosen": [u("a"), a("b"), u("c"), a("d")], "rejected": [u("a"), a("b"), u("e"), a("d")]},
     r"the chosen reply's first message is the 'user''s"),
]


@pytest.mark.parametrize("row, match", BAD)
def test_malformed_conversational_line_one_line(tmp_path, row, match):
    f = write(tmp_path / "p.jsonl", [dict(zip(dpo.KEYS, CHATS[0])), row])
    with pytest.raises(dpo.DPOError, match=rf"^{f} line 2: .*{match}"):
        dpo.read_pairs(f)


def test_prepare_refuses_a_malformed_line_in_one_line(tmp_path, capsys):
    f = write(tmp_path / "p.jsonl", [dict(zip(dpo.KEYS, CHATS[0])), BAD[7][0]])
    assert prepare.main(["--dpo", str(f), "--out", str(tmp_path / "d")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"prepare.py: error: {f} line 2: the chosen reply's last message")
    assert not (tmp_path / "d" / "meta.json").exists()


def test_ours_renders_as_sft_does_and_warns_equal_replies(tmp_path):
    """With our template a one-message reply is what SFT makes of prompt + reply; an equal chosen and rejected
    is warned about, as for text pairs."""
    p, c, r = CHATS[1]
    assert dpo.conversation(dict(zip(dpo.KEYS, (p, c, r))), "x")[:2] == sft.render({"messages": p + c}, "x")
    f = write(tmp_path / "p.jsonl", [{"prompt": p, "chosen": c, "rejected": c}])
    with pytest.warns(UserWarning, match=r"chosen equals rejected on line\(s\) 1"):
        assert dpo.read_pairs(f)[0][1:] == ("日本語 😀\n", "日本語 😀\n", True)


def test_train_objective_dpo_on_conversations(tmp_path, capsys):
    """prepare.py --dpo on conversational pairs (char tokenizer, our template), then 3 steps of train
    --objective dpo: finite losses, log 2 at step 0 (the policy is the reference)."""
    rng = np.random.default_rng(0)
    lines = []
    for k in range(24):
        w = "".join(rng.choice(list("abcd"), size=3))
        ask = [u(f"{w}?")]
        lines.append({"prompt": ask, "chosen": [a(w[::-1])], "rejected": [a(w)]} if k % 2 else
                     {"chosen": ask + [a(w[::-1])], "rejected": ask + [a(w + w)]})
    f = write(tmp_path / "p.jsonl", lines)
    assert prepare.main(["--dpo", str(f), "--out", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert "chat template for the 24 conversational pairs: ours" in out
    rc, err = cli(capsys, "--data_dir", tmp_path / "d", "--out_dir", tmp_path / "o", "--max_iters", 3,
                  "--eval_interval", 3, "--log_interval", 1, "--n_layer", 1, "--n_head", 2, "--n_embd", 16, "--block_size", 40,
                  "--batch_size", 4, "--eval_iters", 1, "--warmup_iters", 1, "--learning_rate", "3e-3",
                  "--no-progress", "--objective", "dpo", "--beta", "0.5", "--dtype", "float64")
    assert rc == 0, err
    log = [json.loads(line) for line in (tmp_path / "o" / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if r["event"] == "train"]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    assert abs([r for r in log if r["event"] == "eval"][0]["train_loss"] - math.log(2)) < 1e-9
