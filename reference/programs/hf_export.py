"""Hugging Face model directories out: our GPT as a GPT-2 or Llama directory that transformers loads.

`save_pretrained(model, DIR)` writes config.json (`hf_config`) and model.safetensors (`hf_state`, our
parameters under transformers' names through `reference.programs.hf.key_map`) that transformers'
`from_pretrained` loads as GPT2LMHeadModel (a GPT-2-like config) or LlamaForCausalLM (a Llama-like
config), with the same logits; a BPE tokenizer is written as tokenizer.json, with its settings where it
carries them (chat_template.jinja, tokenizer_config.json, and its bos and eos ids in config.json and
generation_config.json: reference/programs/tokenizer_settings.py). Anything transformers
cannot express is refused with `HFError` naming the option, before anything is written. The directory
is built beside the target and swapped in by one rename (`_exchange`). Reading such directories:
`reference.programs.hf`. The key maps and the limits: docs/huggingface.md.

Libraries: the tensors are written with the safetensors library, imported when a directory is written;
it is in the `hf` extra.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
from pathlib import Path

import numpy as np

from ..config import GPTConfig
from ..model import GPT
from .hf import CONFIG_NAME, WEIGHTS_NAME, HFError, _safetensors, key_map

__all__ = ["hf_config", "hf_state", "save_pretrained"]


# ------------------------------------------------------------------------------------------ configs


def hf_config(config: GPTConfig) -> dict:
    """The config.json that transformers reads as the same model: GPT2LMHeadModel or LlamaForCausalLM.

    GPT-2-like: learned positions, LayerNorm, GELU MLP, biases, one key/value head per head.
    Llama-like: RoPE, RMSNorm, SwiGLU (biases all on or all off, grouped-query heads allowed).
    Anything else raises HFError with the reason."""
    c = config
    if c.pos == "learned":
        wrong = [(name, getattr(c, name), want) for name, want in
                 (("norm", "layernorm"), ("mlp", "gelu"), ("bias", True)) if getattr(c, name) != want]
        if c.kv_heads != c.n_head:
            wrong.append(("n_kv_head", c.n_kv_head, c.n_head))
        if wrong:
            name, value, want = wrong[0]
            raise HFError(f"cannot export {name}={value!r} with pos='learned': transformers' GPT2LMHeadModel "
                          f"needs {name}={want!r} (a GPT-2-like config: learned positions, layernorm, gelu MLP, "
                          f"biases, no grouped-query heads)")
        return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": c.vocab_size,
                "n_positions": c.block_size, "n_embd": c.n_embd, "n_layer": c.n_layer, "n_head": c.n_head,
                "n_inner": c.hidden, "activation_function": "gelu_new" if c.gelu_approximate == "tanh" else "gelu",
                "layer_norm_epsilon": c.norm_eps, "resid_pdrop": c.dropout, "embd_pdrop": c.dropout,
                "attn_pdrop": c.dropout, "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
                "reorder_and_upcast_attn": False, "tie_word_embeddings": c.tie_weights,
                "bos_token_id": None, "eos_token_id": None, "dtype": c.dtype}
    if c.pos == "rope":
        wrong = [(name, getattr(c, name), want) for name, want in
                 (("norm", "rmsnorm"), ("mlp", "swiglu")) if getattr(c, name) != want]
        if wrong:
            name, value, want = wrong[0]
            raise HFError(f"cannot export {name}={value!r} with pos='rope': transformers' LlamaForCausalLM "
                          f"needs {name}={want!r} (a Llama-like config: RoPE, rmsnorm, swiglu)")
        return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": c.vocab_size,
                "hidden_size": c.n_embd, "intermediate_size": c.hidden, "num_hidden_layers": c.n_layer,
                "num_attention_heads": c.n_head, "num_key_value_heads": c.kv_heads, "head_dim": c.head_dim,
                "hidden_act": "silu", "max_position_embeddings": c.block_size, "rms_norm_eps": c.norm_eps,
                "tie_word_embeddings": c.tie_weights, "attention_bias": c.bias, "mlp_bias": c.bias,
                "attention_dropout": 0.0, "rope_theta": c.rope_base,
                "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_base},
                "bos_token_id": None, "eos_token_id": None, "dtype": c.dtype}
    raise HFError(f"cannot export pos={c.pos!r}: transformers' GPT-2 has learned positions (pos='learned') and "
                  f"Llama has RoPE (pos='rope'); no supported architecture has {c.pos} positions")


# ------------------------------------------------------------------------------------------ writing


def hf_state(model: GPT) -> dict[str, np.ndarray]:
    """Our parameters under transformers' names and layouts (the inverse of `key_map`); a tied
    lm_head is left out, as save_pretrained does."""
    arch = "gpt2" if hf_config(model.config)["model_type"] == "gpt2" else "llama"
    params = dict(model.named_parameters(remove_duplicate=False))
    out = {}
    for key, (ours, how, rows) in key_map(model.config, arch).items():
        a = params[ours].data if rows is None else params[ours].data[rows]
        out[key] = np.ascontiguousarray(a.T if how == "T" else a)
    return out


def _sibling(path: Path, role: str) -> Path:
    """A fresh hidden directory name beside `path`: `.<name>.<role>-<pid>-<8 hex>.tmp`."""
    return path.with_name(f".{path.name}.{role}-{os.getpid()}-{secrets.token_hex(4)}.tmp")


def _remove_stale_siblings(path: Path) -> None:
    """Remove what an export killed with SIGKILL left beside `path` (its build or old directory): the
    names of `_sibling` whose writer process is gone. A live writer's directory is never touched."""
    from .atomic import _alive
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(build|old)-(\d+)-[0-9a-f]{{8}}\.tmp")
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return
    for entry in entries:
        m = pattern.fullmatch(entry.name)
        if m and not _alive(int(m[2])) and entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)


def _exchange(a: Path, b: Path) -> None:
    """Swap the directories `a` and `b` in one step (Linux renameat2 RENAME_EXCHANGE); where that call
    is missing, two renames, the first undone if the second fails (a kill between them leaves the old
    directory under its `.old` name)."""
    import ctypes
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        renameat2 = None
    if renameat2 is not None:
        at_fdcwd, rename_exchange = -100, 2
        if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            raise OSError(err, os.strerror(err), str(b))
    old = _sibling(b, "old")
    os.rename(b, old)
    try:
        os.rename(a, b)
    except BaseException:
        os.rename(old, b)
        raise
    os.rename(old, a)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


GENERATION_NAME = "generation_config.json"


def save_pretrained(model: GPT, path, *, tokenizer=None) -> Path:
    """Write `model` as a Hugging Face model directory (config.json + model.safetensors, plus
    tokenizer.json for a BPE tokenizer) that transformers' `from_pretrained` loads. A BPE tokenizer that
    carries settings (reference/programs/tokenizer_settings.py) also brings chat_template.jinja and
    tokenizer_config.json as transformers 5 writes them, and its bos and eos ids into config.json and
    generation_config.json (as transformers' model save_pretrained writes a config's ids); without
    settings, the ids stay null and no generation config is written.

    The directory holds exactly what this call wrote: it is built beside `path` (a hidden sibling,
    `.<name>.build-<pid>-<hex>.tmp`), synced, and swapped in by a rename, so no file of an earlier model
    (an old shard, index, tokenizer or generation config) survives, and a failure or a Ctrl-C at any
    moment leaves `path` as it was and no sibling behind. `path` may be missing, empty, or a model
    directory (it holds config.json), which is replaced as a whole; anything else is refused.

    HFError (before anything is written) for a config transformers' GPT-2 or Llama cannot express, or a
    `path` that is not a model directory; OSError for a directory that cannot be written."""
    config_json = hf_config(model.config)
    _, save_file = _safetensors()
    path = Path(path).absolute()
    if path.exists() and not path.is_dir():
        raise HFError(f"{path}: exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not (path / CONFIG_NAME).is_file():
        raise HFError(f"{path}: holds files but no {CONFIG_NAME}, so it is not a Hugging Face model directory; "
                      f"writing replaces the whole directory: choose a new or empty one")
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_siblings(path)
    build = _sibling(path, "build")
    build.mkdir()
    try:
        tensors = hf_state(model)
        save_file(tensors, str(build / WEIGHTS_NAME), metadata={"format": "pt"})
        del tensors
        tok = tokenizer.to_dict() if tokenizer is not None and not isinstance(tokenizer, dict) else tokenizer
        if tok is not None and tok.get("kind") == "bpe":
            from .tokenizer_settings import special_ids, write_settings
            (build / "tokenizer.json").write_text(tok["tokenizer_json"], encoding="utf-8")
            write_settings(tok, build)
            ids = special_ids(tok)
            if any(i is not None for i in ids.values()):     # the model config names the tokenizer's ids
                config_json.update(ids)
                (build / GENERATION_NAME).write_text(json.dumps(ids, indent=2) + "\n", encoding="utf-8")
        (build / CONFIG_NAME).write_text(json.dumps(config_json, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        for file in build.iterdir():
            with open(file, "rb+") as f:
                os.fsync(f.fileno())
        _fsync_dir(build)
        from .atomic import _interrupts_held
        with _interrupts_held():                       # Ctrl-C waits until the swap is done
            if path.is_dir():
                _exchange(build, path)                 # build now holds the old directory
            else:
                os.rename(build, path)
        _fsync_dir(path.parent)
    finally:
        shutil.rmtree(build, ignore_errors=True)       # the failed build, or the old directory
    return path
