"""A model directory's own chat template (reference/programs/chat_template.py, data/prepare.py --sft with
--tokenizer DIR): for several templates, our prompt and response text and their token ids equal
transformers' AutoTokenizer.from_pretrained(dir).apply_chat_template on a directory built offline; the
template's file, digest and errors (one line naming the file, the JSONL line and jinja2's message)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
pytest.importorskip("jinja2")

from reference.programs import sft  # noqa: E402
from reference.programs.chat_template import ChatTemplate, ChatTemplateError  # noqa: E402
from reference.programs.tokenizers import BPETokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "data"))
import prepare  # noqa: E402

CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>'"
          " + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
# A system message first (a default one when the conversation has none), bos_token/eos_token variables,
# a namespace, loop controls and tojson: the features of Llama-style templates.
SYSTEM_BOS_EOS = """{{ bos_token }}
{% set ns = namespace(n=0) %}
{% if messages[0]['role'] != 'system' %}
[SYS] You are terse. [/SYS]
{% endif %}
{% for message in messages %}
  {% set ns.n = ns.n + 1 %}
  {% if message['role'] == 'system' %}
[SYS] {{ message['content'] }} [/SYS]
  {% elif message['role'] == 'user' %}
[INST] {{ message['content'] | trim }} ({{ ns.n }}) {{ {'len': message['content'] | length} | tojson }} [/INST]
  {% else %}
>>> {{ message['content'] }}{{ eos_token }}
  {% endif %}
{% endfor %}
{% if add_generation_prompt %}>>> {% endif %}"""
# Roles other than user/assistant raise, as many Hub templates do.
STRICT = ("{% for message in messages %}{% if message['role'] not in ['user', 'assistant'] %}"
          "{{ raise_exception('Only user and assistant roles are supported, got ' + message['role']) }}{% endif %}"
          "{% generation %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}{% endgeneration %}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")
TEMPLATES = {"chatml": CHATML, "system-bos-eos": SYSTEM_BOS_EOS, "strict": STRICT}

CONVERSATIONS = [
    [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello! How are you?"}],
    [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Colour of the sky?"},
     {"role": "assistant", "content": "Blue"}],
    [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
     {"role": "user", "content": "and 3+3 ? "}, {"role": "assistant", "content": " 6 ", "name": None}],
]
CORPUS = ["Hi there, hello! How are you? Answer in one word. Colour of the sky? Blue and 3+3 6 4 2+2 system user "
          "assistant You are terse."] * 20
SPECIALS = ["<|im_start|>", "<|im_end|>", "<|user|>", "<|assistant|>", "<|end|>", "<|system|>"]


def model_dir(path: Path, template: str, *, in_config: bool = False) -> Path:
    """A byte-level BPE trained here, saved by transformers' save_pretrained with `template` as its chat
    template (chat_template.jinja, or, `in_config`, the chat_template key of tokenizer_config.json)."""
    bpe = tokenizers.ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS, vocab_size=300, min_frequency=1, show_progress=False,
                            special_tokens=["<|endoftext|>", "<s>", "</s>"])
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>",
                                               unk_token="<|endoftext|>", additional_special_tokens=SPECIALS)
    tok.chat_template = template
    tok.save_pretrained(path)
    if in_config:
        (path / "chat_template.jinja").unlink()
        config = json.loads((path / "tokenizer_config.json").read_text())
        (path / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": template}))
    return path


@pytest.fixture(scope="module", params=[(n, f) for n in TEMPLATES for f in (False, True)],
                ids=lambda p: f"{p[0]}-{'tokenizer_config' if p[1] else 'jinja'}")
def directory(request, tmp_path_factory):
    name, in_config = request.param
    return name, model_dir(tmp_path_factory.mktemp(name) / "m", TEMPLATES[name], in_config=in_config)


def test_text_and_ids_equal_transformers(directory):
    name, d = directory
    theirs = transformers.AutoTokenizer.from_pretrained(d)
    ours, tok = ChatTemplate.from_dir(d), BPETokenizer.from_dir(d)
    assert ours.source == str(d / ("tokenizer_config.json" if not (d / "chat_template.jinja").exists()
                                   else "chat_template.jinja"))
    for msgs in CONVERSATIONS:
        if name == "strict" and msgs[0]["role"] == "system":
            continue
        prompt, response = sft.render({"messages": msgs}, "x", ours)
        want_prompt = theirs.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
        want_full = theirs.apply_chat_template(msgs, tokenize=False)
        assert prompt == want_prompt and prompt + response == want_full, (prompt, response, want_full)
        ids, mask, lengths = sft.encode_examples([(prompt, response)], tok)
        want_prompt_ids = theirs.apply_chat_template(msgs[:-1], add_generation_prompt=True, return_dict=False)
        want_ids = theirs.apply_chat_template(msgs, return_dict=False)
        assert ids.tolist() == list(want_ids) and int((mask == 0).sum()) == len(want_prompt_ids)
        assert ids[:len(want_prompt_ids)].tolist() == list(want_prompt_ids)
        assert set(mask[len(want_prompt_ids):].tolist()) == {1}
    if name == "system-bos-eos":
        assert prompt.startswith("<s>") and response.endswith("</s>\n")    # the variables are the tokenizer's


def test_a_template_that_raises_names_file_line_and_message(tmp_path, capsys):
    d = model_dir(tmp_path / "m", STRICT)
    f = tmp_path / "ex.jsonl"
    rows = [{"messages": CONVERSATIONS[0]}, {"messages": CONVERSATIONS[0]}, {"messages": CONVERSATIONS[1]}]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(Exception) as theirs:                      # transformers says the same
        transformers.AutoTokenizer.from_pretrained(d).apply_chat_template(CONVERSATIONS[1], tokenize=False)
    assert "got system" in str(theirs.value)
    assert prepare.main(["--sft", str(f), "--tokenizer", str(d), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"prepare.py: error: {f} line 3: the chat template of {d / 'chat_template.jinja'} failed: Only "
                   "user and assistant roles are supported, got system"], err
    assert not (tmp_path / "out").exists()
    (d / "chat_template.jinja").write_text("{% for m in messages %}{{ m.content }")
    with pytest.raises(ChatTemplateError, match=r"chat_template.jinja: the chat template does not compile \(template "
                                                r"line 1: unexpected '}'\)"):
        ChatTemplate.from_dir(d)


def test_a_template_whose_full_rendering_does_not_start_with_the_prompt_is_refused(tmp_path):
    d = model_dir(tmp_path / "m", "{% for m in messages %}{{ m.content }}{% endfor %}"
                                  "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    with pytest.raises(sft.SFTError, match=r"^x line 1: the chat template of .*chat_template.jinja renders the "
                                           r"conversation as 'Hi thereHello! How are you\?'..., which does not start"):
        sft.render({"messages": CONVERSATIONS[0]}, "x line 1", ChatTemplate.from_dir(d))


def test_prepare_records_the_template_and_its_digest(tmp_path, capsys):
    d = model_dir(tmp_path / "m", CHATML)
    f = tmp_path / "ex.jsonl"
    f.write_text("\n".join(json.dumps({"messages": m}) for m in CONVERSATIONS) + "\n")
    assert prepare.main(["--sft", str(f), "--tokenizer", str(d), "--out", str(tmp_path / "a")]) == 0
    meta = json.loads((tmp_path / "a" / "meta.json").read_text())
    digest = ChatTemplate.from_dir(d).digest
    assert meta["sft"]["chat_template"] == {"source": str(d / "chat_template.jinja"), "sha256": digest}
    assert f"chat template for \"messages\": {d / 'chat_template.jinja'} (sha256 {digest[:12]})" in capsys.readouterr().out
    ids = np.fromfile(tmp_path / "a" / "train.bin", meta["dtype"])
    theirs = transformers.AutoTokenizer.from_pretrained(d)
    assert ids.tolist() == sum((list(theirs.apply_chat_template(m, return_dict=False)) for m in CONVERSATIONS[:2]), [])
    assert prepare.main(["--sft", str(f), "--out", str(tmp_path / "b")]) == 0           # char: our template
    meta = json.loads((tmp_path / "b" / "meta.json").read_text())
    assert meta["sft"]["chat_template"] == {"source": "ours", "sha256": sft.CHAT_TEMPLATE_DIGEST}
    assert "chat template for \"messages\": ours (reference/programs/sft.py)" in capsys.readouterr().out


@pytest.mark.parametrize("plant", ["no trim_blocks", "no lstrip_blocks", "no special tokens"])
def test_planted_differences_from_transformers_are_caught(tmp_path, monkeypatch, plant):
    """The comparison above fails for a renderer that differs from transformers' in one setting."""
    import jinja2.sandbox
    d = model_dir(tmp_path / "m", SYSTEM_BOS_EOS)
    real = jinja2.sandbox.ImmutableSandboxedEnvironment

    class Planted(real):
        def __init__(self, **kw):
            kw["trim_blocks"] = kw["trim_blocks"] and plant != "no trim_blocks"
            kw["lstrip_blocks"] = kw["lstrip_blocks"] and plant != "no lstrip_blocks"
            super().__init__(**kw)

    monkeypatch.setattr(jinja2.sandbox, "ImmutableSandboxedEnvironment", Planted)
    ours = ChatTemplate.from_dir(d)
    if plant == "no special tokens":
        ours.variables = {}
    msgs = CONVERSATIONS[1]
    want = transformers.AutoTokenizer.from_pretrained(d).apply_chat_template(msgs, tokenize=False)
    assert ours.render(msgs) != want
