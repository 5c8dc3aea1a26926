"""The third oracle: transformers' own GPT2LMHeadModel and LlamaForCausalLM (the `hf` extra).

transformers computes a few steps of a float64 Llama in float32 on purpose (docs/huggingface.md,
"The float64 recipe"):

1. `LlamaRMSNorm.forward` upcasts its input to float32 (`hidden_states.to(torch.float32)`) and casts
   the normalised result back;
2. `LlamaRotaryEmbedding` builds `inv_freq` with `torch.arange(..., dtype=torch.float)` and its
   forward takes `position_ids.float() * inv_freq.float()`, so cos and sin are float32 numbers;
3. the eager attention's softmax runs with `dtype=torch.float32`;
4. the causal-LM loss (`ForCausalLMLoss`) starts with `logits.float()`.

`float64_llama` turns a float64 LlamaForCausalLM into one that computes every step in float64, with
torch's and transformers' own pieces: `torch.nn.functional.rms_norm` for (1), the same inverse
frequencies and tables computed in float64 for (2), transformers' "sdpa" attention (torch's
`scaled_dot_product_attention`, which computes in its inputs' dtype) for (3), and
`torch.nn.functional.cross_entropy` on the logits for (4) (`hf_loss`). GPT-2 has none of these in
float64 but (4), and uses the same `hf_loss`.
"""

from __future__ import annotations

import types

import numpy as np
import torch
import torch.nn.functional as F

from reference.programs.hf import key_map

__all__ = ["float64_llama", "hf_loss", "hf_grads", "run_hf"]


def _rms_norm_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    # LlamaRMSNorm: weight * x / sqrt(mean(x^2) + eps), here in the input's dtype (torch's own rms_norm)
    return F.rms_norm(hidden_states, self.weight.shape, self.weight, self.variance_epsilon)


def _rope_inv_freq(config) -> torch.Tensor:
    # compute_default_rope_parameters' formula, with float64 in place of its torch.float
    base = config.rope_parameters["rope_theta"]
    dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))


def _rope_forward(self, x: torch.Tensor, position_ids: torch.Tensor):
    # LlamaRotaryEmbedding.forward with float64 in place of its .float()
    freqs = position_ids[..., None].to(torch.float64) * self.inv_freq.to(torch.float64)
    emb = torch.cat((freqs, freqs), dim=-1)
    return (emb.cos() * self.attention_scaling).to(x.dtype), (emb.sin() * self.attention_scaling).to(x.dtype)


def float64_llama(model):
    """Patch a float64 LlamaForCausalLM (in place) so that it computes every step in float64."""
    if next(model.parameters()).dtype != torch.float64:
        raise ValueError("float64_llama expects a float64 model (model.double())")
    model.set_attn_implementation("sdpa")
    for module in model.modules():
        name = type(module).__name__
        if name == "LlamaRMSNorm":
            module.forward = types.MethodType(_rms_norm_forward, module)
        elif name == "LlamaRotaryEmbedding":
            module.inv_freq = _rope_inv_freq(module.config)
            module.original_inv_freq = module.inv_freq.clone()
            module.forward = types.MethodType(_rope_forward, module)
    return model


def hf_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of (B, T, V) logits against (B, T) targets, in the logits' dtype."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def run_hf(model, idx: np.ndarray, targets: np.ndarray):
    """Forward, loss and backward of a transformers causal LM: (logits, loss) as numpy; grads kept."""
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=torch.as_tensor(idx)).logits
    loss = hf_loss(logits, torch.as_tensor(targets))
    loss.backward()
    return logits.detach().numpy(), loss.item()


def hf_grads(model, config, arch: str) -> dict[str, np.ndarray]:
    """The gradients of a transformers model under our parameter names and layouts (after run_hf):
    GPT-2's Conv1D gradients transposed, Llama's q/k/v gradients stacked into our fused c_attn."""
    named = dict(model.named_parameters())
    if arch == "gpt2" and not any(k.startswith("transformer.") for k in named):
        named = {f"transformer.{k}": v for k, v in named.items()}
    out: dict[str, list] = {}
    for key, (ours, how, rows) in key_map(config, arch).items():
        g = named[key].grad.detach().numpy()
        out.setdefault(ours, []).append(g.T if how == "T" else g)
    if config.tie_weights:                                  # one tensor in both: transformers ties them too
        out["lm_head.weight"] = out["transformer.wte.weight"]
    return {k: np.concatenate(v, axis=0) if len(v) > 1 else v[0] for k, v in out.items()}
