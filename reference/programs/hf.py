"""Hugging Face model directories in: GPT-2 and Llama weights as our GPT; the key maps both ways.

In: `from_pretrained(DIR)` reads a directory written by transformers' `save_pretrained` (config.json
plus model.safetensors, or a sharded model.safetensors.index.json) holding F32, F16 or BF16 tensors of

* GPT-2: `GPT2LMHeadModel` (keys `transformer.h.0.attn.c_attn.weight`, ...) or the hub's bare
  `GPT2Model` (the same keys without `transformer.`), semantics of transformers' models/gpt2;
* Llama: `LlamaForCausalLM` (keys `model.layers.0.self_attn.q_proj.weight`, ...), semantics of
  transformers' models/llama.

Out: `reference.programs.hf_export.save_pretrained(model, DIR)` writes the directory back, through the
same key maps (`key_map`). Anything either side cannot express is refused with `HFError` naming the
option. The key maps, the float64 recipe for the oracle and the limits: docs/huggingface.md.

Memory: the tensors are read one at a time, straight into the model's arrays; loading never holds
more than the model plus its largest tensor (GPT-2's wte).

Libraries: tensors are read (and, by hf_export.py, written) with the safetensors library (the format's
reference implementation), imported when a directory is read or written; it is in the `hf` extra.
NumPy has no bfloat16, so the library cannot hand a BF16 tensor to NumPy: for those (and only those) the tensor's
byte range, from the file's header, is read as uint16 and widened to float32 by hand (`_bf16_to_f32`:
a bfloat16 is the top half of a float32's bits, so the widening is exact).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np

from ..config import GPTConfig
from ..model import GPT, parameter_shapes

__all__ = ["HFError", "read_hf_config", "config_from_hf", "check_dir", "from_pretrained", "load_weights", "key_map",
           "WEIGHTS_NAME", "INDEX_NAME", "CONFIG_NAME"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
HF_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": None, "F64": np.float64}   # None: widened by hand
EXTRA_HINT = "pip install -e '.[hf]'"
# Buffers some checkpoints store that are not parameters: GPT-2's causal mask (`attn.bias`,
# `attn.masked_bias`, in files written by transformers before 4.31) and the RoPE table
# (`rotary_emb.inv_freq`) in some Llama files.
IGNORED = re.compile(r"(^|\.)h\.\d+\.attn\.(bias|masked_bias)$|\.rotary_emb\.inv_freq$")
GPT2_ACTIVATIONS = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "none"}   # transformers' ACT2FN


class HFError(ValueError):
    """A Hugging Face model directory that is missing, incomplete, corrupt or not expressible here."""


def _safetensors():
    try:
        import safetensors.numpy
        from safetensors import safe_open
    except ImportError:
        raise ImportError(f"reading and writing Hugging Face model directories needs the safetensors library, "
                          f"which is not installed; install the hf extra: {EXTRA_HINT}") from None
    return safe_open, safetensors.numpy.save_file


# ------------------------------------------------------------------------------------------ configs


def read_hf_config(path) -> dict:
    """config.json of the model directory `path` as a dict; HFError if missing or not a JSON object."""
    path = Path(path)
    if not path.exists():
        raise HFError(f"{path}: no such directory (expected a Hugging Face model directory)")
    if not path.is_dir():
        raise HFError(f"{path}: not a directory (expected a Hugging Face model directory with {CONFIG_NAME})")
    file = path / CONFIG_NAME
    try:
        d = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HFError(f"{path}: incomplete model directory: {CONFIG_NAME} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HFError(f"{file}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise HFError(f"{file}: expected a JSON object, got {type(d).__name__}")
    return d


def _architecture(d: dict, where: str) -> str:
    """'gpt2' or 'llama' from model_type and architectures; HFError for anything else."""
    model_type = d.get("model_type")
    archs = d.get("architectures") or []
    allowed = {"gpt2": ("GPT2LMHeadModel", "GPT2Model"), "llama": ("LlamaForCausalLM",)}
    if model_type not in allowed:
        raise HFError(f"{where}: unsupported architecture model_type={model_type!r} "
                      f"(architectures {archs}); supported: gpt2 (GPT2LMHeadModel) and llama (LlamaForCausalLM)")
    other = [a for a in archs if a not in allowed[model_type]]
    if other:
        raise HFError(f"{where}: unsupported architecture {other[0]}; supported for model_type {model_type!r}: "
                      f"{', '.join(allowed[model_type])}")
    return model_type


def _refuse(where: str, option: str, value, why: str) -> None:
    raise HFError(f"{where}: unsupported option {option}={value!r}: {why}")


def _field(d: dict, name: str, where: str):
    if d.get(name) is None:
        raise HFError(f"{where}: missing field {name!r}")
    return d[name]


def config_from_hf(d: dict, *, dtype: str = "float32", dropout: float = 0.0, block_size: int | None = None,
                   where: str = CONFIG_NAME) -> GPTConfig:
    """Our GPTConfig for a transformers GPT2Config / LlamaConfig dict (config.json).

    `block_size`: a shorter context than the model's (learned positions keep their first rows, as
    nanoGPT's crop_block_size). `dropout` is ours to choose (default 0: inference and fine-tuning as
    nanoGPT's from_pretrained). HFError names any option the architecture here cannot express; a bad
    `dtype` or `dropout` is the caller's argument, and its message says so, not the file's."""
    for name, value in (("dtype", dtype), ("dropout", dropout)):   # the caller's arguments, before the file's
        try:
            GPTConfig(**{name: value})
        except (TypeError, ValueError) as e:
            raise HFError(f"{e} (the {name} argument of this call, not a field of {where})") from None
    arch = _architecture(d, where)
    if arch == "gpt2":
        n_embd, n_head = _field(d, "n_embd", where), _field(d, "n_head", where)
        for option, ok in (("scale_attn_by_inverse_layer_idx", False), ("reorder_and_upcast_attn", False),
                           ("add_cross_attention", False), ("scale_attn_weights", True)):
            if d.get(option, ok) != ok:
                _refuse(where, option, d[option], f"only {option}={ok} is supported (GPT-2's standard attention)")
        act = d.get("activation_function", "gelu_new")
        if act not in GPT2_ACTIVATIONS:
            _refuse(where, "activation_function", act, f"supported: {sorted(GPT2_ACTIVATIONS)}")
        n_inner = d.get("n_inner")
        fields = dict(vocab_size=_field(d, "vocab_size", where), block_size=_field(d, "n_positions", where),
                      n_layer=_field(d, "n_layer", where), n_head=n_head, n_embd=n_embd, bias=True,
                      tie_weights=d.get("tie_word_embeddings", True), norm="layernorm",
                      norm_eps=d.get("layer_norm_epsilon", 1e-5), mlp="gelu",
                      mlp_hidden=n_inner,
                      gelu_approximate=GPT2_ACTIVATIONS[act], pos="learned")
    else:
        n_embd, n_head = _field(d, "hidden_size", where), _field(d, "num_attention_heads", where)
        head_dim = d.get("head_dim")
        if head_dim is not None and isinstance(n_embd, int) and isinstance(n_head, int) and n_head \
                and head_dim != n_embd // n_head:
            _refuse(where, "head_dim", head_dim, f"only hidden_size / num_attention_heads = {n_embd // n_head}")
        if d.get("hidden_act", "silu") != "silu":
            _refuse(where, "hidden_act", d["hidden_act"], "only silu (SwiGLU) is supported")
        scaling = d.get("rope_scaling")
        if scaling and (not isinstance(scaling, dict) or scaling.get("rope_type", scaling.get("type")) != "default"):
            _refuse(where, "rope_scaling", scaling, "only plain RoPE (rope_type 'default') is supported")
        rope = d.get("rope_parameters") or {}
        if not isinstance(rope, dict) or rope.get("rope_type", "default") != "default":
            _refuse(where, "rope_parameters", rope, "only plain RoPE (rope_type 'default') is supported")
        theta = rope.get("rope_theta", d.get("rope_theta", 10000.0))
        attention_bias, mlp_bias = d.get("attention_bias", False), d.get("mlp_bias", False)
        if attention_bias != mlp_bias:
            _refuse(where, "mlp_bias", mlp_bias, f"one bias setting covers every Linear here, and "
                                                 f"attention_bias={attention_bias!r} differs")
        if d.get("pretraining_tp", 1) not in (None, 1):
            _refuse(where, "pretraining_tp", d["pretraining_tp"], "only 1 is supported")
        n_kv = d.get("num_key_value_heads")
        fields = dict(vocab_size=_field(d, "vocab_size", where), block_size=_field(d, "max_position_embeddings", where),
                      n_layer=_field(d, "num_hidden_layers", where), n_head=n_head, n_embd=n_embd,
                      n_kv_head=None if n_kv in (None, n_head) else n_kv, bias=bool(attention_bias),
                      tie_weights=d.get("tie_word_embeddings", False), norm="rmsnorm",
                      norm_eps=d.get("rms_norm_eps", 1e-6), mlp="swiglu",
                      mlp_hidden=_field(d, "intermediate_size", where), pos="rope", rope_base=theta)
    if block_size is not None:
        if not isinstance(block_size, int) or not 1 <= block_size <= fields["block_size"]:
            raise HFError(f"block_size must be an integer in 1..{fields['block_size']} (the model's context), "
                          f"got {block_size!r}")
        fields["block_size"] = block_size
    try:
        config = GPTConfig(**fields, dropout=dropout, dtype=dtype)
        default = config.replace(mlp_hidden=None)
    except (TypeError, ValueError) as e:
        raise HFError(f"{where}: {e}") from None
    return default if default.hidden == config.hidden else config   # the default width is left implicit


# ------------------------------------------------------------------------------------------ key maps


# Transformers' Llama names for our modules inside `transformer.h.<i>` (GPT-2's are ours).
LLAMA_LAYER_NAMES = {"ln_1": "input_layernorm", "ln_2": "post_attention_layernorm", "attn.c_proj": "self_attn.o_proj",
                     "mlp.c_fc": "mlp.gate_proj", "mlp.c_gate": "mlp.up_proj", "mlp.c_proj": "mlp.down_proj"}
LLAMA_NAMES = {"transformer.wte.weight": "model.embed_tokens.weight", "transformer.ln_f.weight": "model.norm.weight",
               "lm_head.weight": "lm_head.weight"}
# GPT-2's Conv1D layers store their weight as (in, out), the transpose of our Linear's (out, in).
GPT2_CONV1D = re.compile(r"transformer\.h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight")
LAYER_PARAM = re.compile(r"transformer\.h\.(\d+)\.(.+)\.(weight|bias)")


def key_map(config: GPTConfig, arch: str) -> dict[str, tuple[str, str, slice | None]]:
    """HF key -> (our parameter name, how, rows): how is "copy" or "T" (GPT-2's Conv1D stores (in, out));
    rows, for Llama's q/k/v, is the slice of our fused c_attn they fill. GPT-2 keys with `transformer.`.

    Built over `reference.model.parameter_shapes(config)`, every parameter of the model: each gets its
    transformers name(s), and a parameter with none raises HFError naming it."""
    m: dict[str, tuple[str, str, slice | None]] = {}
    hd = config.head_dim
    q, kv = config.n_head * hd, config.kv_heads * hd
    qkv_rows = {"q_proj": slice(0, q), "k_proj": slice(q, q + kv), "v_proj": slice(q + kv, q + 2 * kv)}
    for ours in parameter_shapes(config):
        if arch == "gpt2":
            m[ours] = (ours, "T" if GPT2_CONV1D.fullmatch(ours) else "copy", None)
            continue
        layer = LAYER_PARAM.fullmatch(ours)
        if ours in LLAMA_NAMES:
            m[LLAMA_NAMES[ours]] = (ours, "copy", None)
        elif layer and layer[2] == "attn.c_attn":                # one fused matrix: q, k and v by rows
            for proj, rows in qkv_rows.items():
                m[f"model.layers.{layer[1]}.self_attn.{proj}.{layer[3]}"] = (ours, "copy", rows)
        elif layer and layer[2] in LLAMA_LAYER_NAMES:
            m[f"model.layers.{layer[1]}.{LLAMA_LAYER_NAMES[layer[2]]}.{layer[3]}"] = (ours, "copy", None)
        else:
            raise HFError(f"parameter {ours} has no name in transformers' {arch}")
    return m


# ------------------------------------------------------------------------------------------ reading


def _header(file: Path) -> dict:
    """The safetensors JSON header (8-byte little-endian length, then JSON): for BF16 byte ranges only;
    safe_open has validated the file (offsets inside it, no overlaps) before this is read."""
    with open(file, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return json.loads(f.read(n)), 8 + n


def _bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32: the bits become a float32's upper half (exact)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _weight_files(path: Path) -> list[Path]:
    if (path / WEIGHTS_NAME).is_file():
        return [path / WEIGHTS_NAME]
    index = path / INDEX_NAME
    if not index.is_file():
        if any(path.glob("*.bin")) or any(path.glob("*.pt")):
            raise HFError(f"{path}: only pickled PyTorch weights (*.bin) found; this project reads safetensors "
                          f"only (re-save with save_pretrained(..., safe_serialization=True))")
        raise HFError(f"{path}: incomplete model directory: neither {WEIGHTS_NAME} nor {INDEX_NAME} is present")
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        files = sorted(set(weight_map.values()))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
        raise HFError(f"{index}: not a safetensors index (a JSON object with a 'weight_map'): {e}") from None
    out = []
    for name in files:
        if not isinstance(name, str) or Path(name).name != name:
            raise HFError(f"{index}: shard name {name!r} is not a file name in the directory")
        if not (path / name).is_file():
            raise HFError(f"{path}: incomplete model directory: shard {name} named in {INDEX_NAME} is missing")
        out.append(path / name)
    return out


def _tensor_index(files: list[Path]) -> dict[str, tuple[Path, str, tuple[int, ...], str]]:
    """Every tensor in the files: name -> (file, safetensors dtype code, shape, name in the file); read
    from the headers only."""
    safe_open, _ = _safetensors()
    index: dict[str, tuple[Path, str, tuple[int, ...], str]] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="numpy") as f:
                for key in f.keys():
                    s = f.get_slice(key)
                    if key in index:
                        raise HFError(f"{file}: tensor {key} is also in {index[key][0].name}")
                    index[key] = (file, s.get_dtype(), tuple(s.get_shape()), key)
        except HFError:
            raise
        except Exception as e:                               # the library's SafetensorError: a corrupt file
            raise HFError(f"{file}: not a valid safetensors file ({e})") from None
    return index


def _normalise_keys(index: dict, arch: str) -> dict:
    """Hub-style GPT2Model files have no `transformer.` prefix: add it (lm_head keys are top level)."""
    if arch != "gpt2" or any(k.startswith("transformer.") for k in index):
        return index
    return {(k if k.startswith("lm_head.") else f"transformer.{k}"): v for k, v in index.items()}


def load_weights(model: GPT, path, *, arch: str | None = None) -> None:
    """Copy the directory's tensors into `model` (built for its config), one tensor at a time.

    Every expected key must be present with its shape, nothing unexpected may be (but the buffers in
    IGNORED), and every value must be finite; HFError names the file and tensor otherwise."""
    path = Path(path)
    arch = arch or _architecture(read_hf_config(path), str(path / CONFIG_NAME))
    config = model.config
    mapping = key_map(config, arch)
    index = _normalise_keys(_tensor_index(_weight_files(path)), arch)
    if config.tie_weights:
        index.pop("lm_head.weight", None)                    # a tied copy, when a file keeps one (see untied_head)
    unexpected = sorted(k for k in index if k not in mapping and not IGNORED.search(k))
    if unexpected:
        raise HFError(f"{path}: unexpected tensor {unexpected[0]} ({len(unexpected)} in all) for this "
                      f"{arch} config; is config.json the one the weights were saved with?")
    missing = [k for k in mapping if k not in index]
    if missing:
        raise HFError(f"{path}: incomplete weights: tensor {missing[0]} is missing ({len(missing)} in all)")
    params = dict(model.named_parameters(remove_duplicate=False))
    for key, (ours, how, rows) in mapping.items():
        file, code, shape, stored = index[key]
        target = params[ours].data if rows is None else params[ours].data[rows]
        want = target.shape[::-1] if how == "T" else target.shape
        crop = ours == "transformer.wpe.weight" and shape[0] >= want[0] and shape[1:] == want[1:]
        if shape != want and not crop:                        # crop: a shorter context keeps the first rows
            raise HFError(f"{file}: tensor {key} has shape {list(shape)}, expected {list(want)}")
        if code not in HF_DTYPES:
            raise HFError(f"{file}: tensor {key} has dtype {code}; supported: {sorted(HF_DTYPES)}")
        arr = _read(file, stored, code)[: want[0]]
        if not np.isfinite(arr).all():
            raise HFError(f"{file}: tensor {key} holds non-finite values (NaN or infinity)")
        target[...] = arr.T if how == "T" else arr           # cast to the model's dtype on assignment


def _read(file: Path, key: str, code: str) -> np.ndarray:
    safe_open, _ = _safetensors()
    if code != "BF16":
        with safe_open(str(file), framework="numpy") as f:
            return f.get_tensor(key)
    header, start = _header(file)
    begin, end = header[key]["data_offsets"]
    bits = np.fromfile(file, dtype="<u2", count=(end - begin) // 2, offset=start + begin)
    return _bf16_to_f32(bits).reshape(header[key]["shape"])


EMBEDDING = {"gpt2": "transformer.wte.weight", "llama": "model.embed_tokens.weight"}


def untied_head(path, config: GPTConfig, arch: str) -> bool:
    """Whether a directory whose config.json ties the embeddings (tie_word_embeddings) also stores an
    `lm_head.weight` that differs from the embedding. transformers then does not tie them: it loads both
    and warns ("both are present in the checkpoints with different values, so we will NOT tie them",
    modeling_utils, transformers 5); a stored head equal to the embedding is a tied copy and is dropped."""
    if not config.tie_weights:
        return False
    index = _normalise_keys(_tensor_index(_weight_files(Path(path))), arch)
    if "lm_head.weight" not in index or EMBEDDING[arch] not in index:
        return False
    head, embedding = (_read(index[k][0], index[k][3], index[k][1]) for k in ("lm_head.weight", EMBEDDING[arch]))
    return head.shape != embedding.shape or not np.array_equal(head, embedding)


def check_dir(path, **config_options) -> tuple[GPTConfig, str]:
    """(our config, "gpt2" | "llama") of a model directory whose config we support and whose weight
    files are all present; nothing is read but config.json (and the shard index). HFError otherwise."""
    path = Path(path)
    d = read_hf_config(path)
    config = config_from_hf(d, where=str(path / CONFIG_NAME), **config_options)
    _weight_files(path)
    return config, _architecture(d, str(path))


def from_pretrained(path, *, dtype: str = "float32", dropout: float = 0.0, block_size: int | None = None) -> GPT:
    """Our GPT with the weights of the Hugging Face model directory `path` (GPT-2 or Llama).

    dtype: "float32" (default) or "float64"; F16 and BF16 weights are widened exactly. A config that ties
    the embeddings with a stored lm_head.weight that differs from them loads untied, with a one-line
    warning on stderr, as transformers loads it (`untied_head`). HFError (a
    ValueError) for a missing, incomplete or unsupported directory; ImportError without safetensors."""
    path = Path(path)
    config, arch = check_dir(path, dtype=dtype, dropout=dropout, block_size=block_size)
    if untied_head(path, config, arch):
        print(f"warning: {path}: lm_head.weight differs from {EMBEDDING[arch]} although {CONFIG_NAME} ties them "
              f"(tie_word_embeddings); loaded untied, as transformers does (set tie_word_embeddings to false in "
              f"{CONFIG_NAME} to say so)", file=sys.stderr)
        config = config.replace(tie_weights=False)
    model = GPT(config, seed=None)                     # nothing drawn: the file overwrites every weight
    load_weights(model, path, arch=arch)
    return model
