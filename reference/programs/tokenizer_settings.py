"""A Hugging Face tokenizer's settings beyond its ids: the special-token roles and the chat template,
read from a model directory and written back as transformers 5's `save_pretrained` writes them.

What a tokenizer directory holds besides its ids (tokenizer.json, or vocab.json + merges.txt):

- `tokenizer_config.json`: which token is bos, eos, unk, pad (... `SPECIAL_ATTRIBUTES`), the tokenizer
  class, and the class's own options (`add_prefix_space`, `model_max_length`, ...);
- `special_tokens_map.json` (written by transformers 4, read by 5): the same roles, winning over
  tokenizer_config.json's;
- the chat template: `chat_template.jinja`, else tokenizer_config.json's `chat_template`
  (reference/programs/chat_template.py, `find_template`).

`read_settings(DIR)` turns these into the two fields a `BPETokenizer` carries (`tokenizer_config`,
`chat_template`), as transformers 5 turns them into the files its `save_pretrained` writes
(PreTrainedTokenizerBase.save_pretrained, checked against it in tests/test_export_template.py):

- the roles resolved as `AutoTokenizer` resolves them (`chat_template.special_tokens`: special_tokens_map.json
  over tokenizer_config.json over GPT-2's <|endoftext|> for GPT-2's classes), each written as its string;
- `additional_special_tokens` (either file) becomes `extra_special_tokens`, transformers 5's name;
- the template moves out of the config into chat_template.jinja; `added_tokens_decoder` is left out
  (tokenizer.json holds the added tokens), and so are the keys transformers adds when it loads a
  directory (`name_or_path`, `is_local`, `local_files_only`, `special_tokens_map_file`, `tokenizer_file`);
- no special_tokens_map.json: transformers 5 does not write it.

A directory with neither tokenizer_config.json, special_tokens_map.json nor a template has no settings:
its tokenizer's dict is what it was before settings were carried, and its export writes tokenizer.json
alone. Other named templates (`additional_chat_templates/`) and a custom tokenizer's code are not carried.

`write_settings(tokenizer dict, DIR)` writes the files; `special_ids` gives the bos and eos ids an export
puts in config.json and generation_config.json (transformers' model config names the tokenizer's ids).
The settings are not part of the tokenizer's digest (reference/programs/tokenizers.py, `tokenizer_identity`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .chat_template import CONFIG_FILE, TEMPLATE_FILE, ChatTemplateError, _json, find_template, special_tokens
from .tokenizers import BPETokenizer, _content

__all__ = ["read_settings", "tokenizer_from_dir", "write_settings", "special_ids", "SPECIAL_MAP_FILE"]

SPECIAL_MAP_FILE = "special_tokens_map.json"
#: tokenizer_config.json keys that transformers 5's save_pretrained does not write back.
DROPPED = ("chat_template", "added_tokens_decoder", "additional_special_tokens", "name_or_path", "is_local",
           "local_files_only", "special_tokens_map_file", "tokenizer_file")


def read_settings(model_dir) -> tuple[dict[str, Any] | None, str | None]:
    """(tokenizer_config, chat_template) of a model directory, as transformers 5 would save them (see the
    module docstring); each None where the directory has none. ChatTemplateError (a ValueError) naming the
    file for a file that is not a JSON object or a template that cannot be read."""
    d = Path(model_dir)
    found = find_template(d)
    template = None if found is None else found[0]
    if not ((d / CONFIG_FILE).is_file() or (d / SPECIAL_MAP_FILE).is_file()):
        return None, template
    config, smap = _json(d / CONFIG_FILE), _json(d / SPECIAL_MAP_FILE)
    out = {k: v for k, v in config.items() if k not in DROPPED}
    out.update(special_tokens(d))                            # the roles as AutoTokenizer resolves them
    extra = smap.get("additional_special_tokens") or config.get("additional_special_tokens")
    if extra and "extra_special_tokens" not in out:
        source = d / (SPECIAL_MAP_FILE if smap.get("additional_special_tokens") else CONFIG_FILE)
        try:
            out["extra_special_tokens"] = [_content(v, source) for v in extra]
        except ValueError as e:
            raise ChatTemplateError(str(e)) from None
    return out, template


def tokenizer_from_dir(model_dir) -> BPETokenizer:
    """`BPETokenizer.from_dir(model_dir)` carrying the directory's settings (`read_settings`)."""
    tok = BPETokenizer.from_dir(model_dir)
    config, template = read_settings(model_dir)
    return BPETokenizer(tok.to_dict()["tokenizer_json"], tokenizer_config=config, chat_template=template)


def write_settings(tok: Mapping[str, Any], directory) -> list[str]:
    """Write a BPE tokenizer dict's settings into `directory` as transformers 5 writes them:
    chat_template.jinja (the template's text as is) and tokenizer_config.json (indent 2, keys sorted,
    as transformers writes it). Returns the names written; none for a dict without settings."""
    d, written = Path(directory), []
    if tok.get("chat_template") is not None:
        (d / TEMPLATE_FILE).write_text(tok["chat_template"], encoding="utf-8")
        written.append(TEMPLATE_FILE)
    if tok.get("tokenizer_config") is not None:
        text = json.dumps(tok["tokenizer_config"], indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        (d / CONFIG_FILE).write_text(text, encoding="utf-8")
        written.append(CONFIG_FILE)
    return written


def special_ids(tok: Mapping[str, Any]) -> dict[str, int | None]:
    """{"bos_token_id": ..., "eos_token_id": ...}: the ids of a BPE tokenizer dict's bos_token and eos_token
    (None where the settings name none, or a string that is not one token of the vocabulary)."""
    config = tok.get("tokenizer_config") or {}
    bpe = BPETokenizer.from_dict(tok)
    out = {}
    for role in ("bos", "eos"):
        token = config.get(f"{role}_token")
        out[f"{role}_token_id"] = bpe.token_id(token) if isinstance(token, str) else None
    return out
