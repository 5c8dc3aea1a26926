"""Low-rank adapters (LoRA): a frozen Linear plus a trainable low-rank update. Derived in docs/lora.md.

    y = x W^T + b + (alpha / r) * dropout(x) A^T B^T

(Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", eq. 3; peft's
`LoraLayer`, whose names, initialisation and scaling these are.) W (out, in) and b stay frozen: no
gradient is computed or stored for them, and only A (r, in) and B (out, r) are trained. B starts at
zero, so a freshly adapted model computes exactly what the base model computes.

`apply_lora(model, rank, alpha, dropout, targets)` wraps the model's Linear layers named by
`targets` in place. The wrapped Linear keeps its class, so `reference.fast.use_kernels` moves it to
either path; `reference/fast/lora.py` is this layer's fast version.
"""

from __future__ import annotations

import fnmatch
import math

import numpy as np

from .layers import Dropout, Linear, MaskSource, _flat2d, name_dropouts
from .model import parameter_shapes
from .module import Module, Parameter


def freeze(p: Parameter) -> None:
    """No gradient for `p`: its grad is None, so nothing is computed or stored for it (zero_grad skips it)."""
    p.grad = None


def unfreeze(p: Parameter) -> None:
    if p.grad is None:
        p.grad = np.zeros(p.data.shape, p.data.dtype)


class LoRALinear(Module):
    """y = base_layer(x) + (alpha / r) * dropout(x) A^T B^T, base frozen. Derived in docs/lora.md.

    base_layer: the Linear it adapts (either path), weight (out, in); its weight and bias get no
    gradient. lora_A (r, in): uniform in +-1/sqrt(in), peft's kaiming_uniform_(a=sqrt(5)) default;
    lora_B (out, r): zeros. Dropout acts on the adapter's input only, with masks from `self.masks`
    (None: off), set by `set_lora_masks`: the layers that call a Linear pass it no mask source.
    Raises ValueError for a rank outside 1 <= r <= min(in, out)."""

    def __init__(self, base_layer: Linear, rank: int, alpha: float, dropout: float = 0.0, *,
                 rng: np.random.Generator):
        n_out, n_in = base_layer.weight.data.shape
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 1 <= rank <= min(n_in, n_out):
            raise ValueError(f"LoRA rank must be an integer with 1 <= rank <= min(in, out) = {min(n_in, n_out)} "
                             f"for a Linear of shape (out, in) = {(n_out, n_in)}, got {rank!r}")
        if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"LoRA alpha must be a finite number > 0, got {alpha!r}")
        dtype = base_layer.weight.data.dtype
        self.base_layer = base_layer
        bound = 1.0 / math.sqrt(n_in)                          # kaiming_uniform_(a=sqrt(5)): gain sqrt(1/3) * sqrt(3/in)
        self.lora_A = Parameter(rng.uniform(-bound, bound, (rank, n_in)).astype(dtype))   # (r, in)
        self.lora_B = Parameter(np.zeros((n_out, rank), dtype))                           # (out, r)
        self.lora_dropout = Dropout(dropout, name="lora_dropout")   # renamed to its path by apply_lora
        self.rank, self.alpha = int(rank), float(alpha)
        self.scaling = self.alpha / self.rank                  # peft's lora_alpha / r
        self.masks: MaskSource | None = None
        self.weight_unmerged: np.ndarray | None = None         # W before merge(), restored by unmerge()
        for p in (base_layer.weight, base_layer.bias):
            if p is not None:
                freeze(p)

    @property
    def bias(self) -> Parameter | None:                        # the fast MLP asks its Linear for it
        return self.base_layer.bias

    def forward(self, x: np.ndarray):                          # x (..., in)
        y, _ = self.base_layer.forward(x)                      # (..., out): x W^T + b
        if self.weight_unmerged is not None:                   # merged: W already holds s B A
            return y, None
        xd, c_drop = self.lora_dropout.forward(x, self.masks)  # (..., in)
        u = _flat2d(xd) @ self.lora_A.data.T                   # (N, r)
        y += (self.scaling * (u @ self.lora_B.data.T)).reshape(y.shape)   # (..., out)
        return y, (x, xd, c_drop, u)

    def backward(self, dy: np.ndarray, cache, dbias: np.ndarray | None = None) -> np.ndarray:
        """dL/dx; adds dL/dA and dL/dB to the grads, nothing to W or b (frozen). `dbias` (the fast MLP's
        column sums of dy, for a bias this layer does not train) is not needed."""
        if cache is None:
            raise RuntimeError("this LoRA layer is merged (inference only): unmerge() it before a backward")
        x, xd, c_drop, u = cache
        dy2 = _flat2d(dy)                                      # (N, out)
        g = self.scaling * dy2                                 # (N, out): dL/d(u B^T)
        self.lora_B.grad += g.T @ u                            # (out, r)
        du = g @ self.lora_B.data                              # (N, r)
        self.lora_A.grad += du.T @ _flat2d(xd)                 # (r, in)
        dxd = self.lora_dropout.backward((du @ self.lora_A.data).reshape(x.shape), c_drop)   # (..., in)
        return self.input_grad(dy2).reshape(x.shape) + dxd     # dy W + the adapter's path

    def input_grad(self, dy2: np.ndarray) -> np.ndarray:
        """dy W (N, in) through the frozen weight: the base Linear's input gradient without its dW."""
        return dy2 @ self.base_layer.weight.data

    def delta_weight(self) -> np.ndarray:
        """(alpha / r) B A (out, in): what the adapter adds to W."""
        return self.scaling * (self.lora_B.data @ self.lora_A.data)

    def merge(self) -> None:
        """W <- W + (alpha / r) B A, for inference: the forward is then one product. The unmerged W is kept,
        so unmerge() restores it bit for bit (subtracting would leave round-off)."""
        if self.weight_unmerged is None:
            w = self.base_layer.weight.data
            self.weight_unmerged = w.copy()
            w += self.delta_weight()

    def unmerge(self) -> None:
        if self.weight_unmerged is not None:
            self.base_layer.weight.data[...] = self.weight_unmerged
            self.weight_unmerged = None


def _is_pattern(target: str) -> bool:
    return any(ch in target for ch in "*?[")


def matches(name: str, target: str) -> bool:
    """A target names a Linear by its full name or a suffix of whole parts ("c_attn", "attn.c_proj",
    "transformer.h.0.mlp.c_fc"), as peft's target_modules list does, or by an fnmatch pattern of the
    full name ("transformer.h.1.*")."""
    if _is_pattern(target):
        return fnmatch.fnmatchcase(name, target)
    return name == target or name.endswith("." + target)


def lora_layers(model: Module) -> dict[str, LoRALinear]:
    """{module name: LoRALinear} in the model's order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def lora_parameters(model: Module) -> dict[str, Parameter]:
    """The trainable adapter parameters by name (`...c_attn.lora_A`, `...c_attn.lora_B`)."""
    return {f"{n}.{p}": getattr(m, p) for n, m in lora_layers(model).items() for p in ("lora_A", "lora_B")}


def _set_child(model: Module, name: str, child: Module) -> None:
    """Put `child` where the module called `name` is: an attribute of its parent, or an item of a list."""
    modules = dict(model.named_modules())
    parent_name, _, attr = name.rpartition(".")
    if attr.isdigit():                                         # `owner.items.3`: item 3 of a list attribute
        owner_name, _, items = parent_name.rpartition(".")
        getattr(modules[owner_name], items)[int(attr)] = child
    else:
        setattr(modules[parent_name], attr, child)


ADAPTER_PARAMS = ("lora_A", "lora_B")                    # the trainable parameters of a LoRALinear
EMBEDDINGS = ("transformer.wte", "transformer.wpe")        # the 2-D parameters that are not Linear layers


def _choose(linears: dict[str, tuple[tuple[int, int], bool]], rank, targets, adapted=frozenset()) -> list[str]:
    """The Linear layers `targets` name, in `linears`' order (the model's), or ValueError. `linears`:
    {name: ((out, in), tied)}; `adapted`: those that already have an adapter. apply_lora checks a built
    model with it and lora_parameter_shapes a config, so both refuse the same targets with the same line."""
    targets = [targets] if isinstance(targets, str) else list(targets)
    if not targets or any(not isinstance(t, str) or not t for t in targets):
        raise ValueError(f"LoRA targets must be a non-empty list of layer names or patterns, got {targets!r}")
    chosen: list[str] = []
    for t in targets:
        hit = [n for n in linears if matches(n, t)]
        if not hit:
            names = sorted({n.rpartition(".")[2] for n in linears if n not in adapted})
            raise ValueError(f"LoRA target {t!r} matches no Linear layer: expected a name such as "
                             f"{', '.join(names)} (or a pattern of full names such as 'transformer.h.0.*')")
        chosen += [n for n in hit if n not in chosen]
    for n in chosen:
        if n in adapted:
            raise ValueError(f"LoRA target layer {n[:-len('.base_layer')]} already has an adapter")
        (n_out, n_in), tied = linears[n]
        if tied:
            raise ValueError(f"LoRA target {n} has a weight tied to another layer (the token embedding): "
                             "expected an untied Linear")
        if isinstance(rank, (int, np.integer)) and not isinstance(rank, bool) and rank > min(n_in, n_out):
            raise ValueError(f"LoRA rank {rank} is larger than layer {n} allows: expected "
                             f"1 <= rank <= min(in, out) = {min(n_in, n_out)}")
    return [n for n in linears if n in chosen]


def apply_lora(model: Module, rank: int, alpha: float, dropout: float = 0.0,
               targets=("c_attn",), seed: int = 0) -> list[str]:
    """Wrap every Linear of `model` that a target matches (see `matches`) in a LoRALinear, in place;
    returns the wrapped layers' names in model order. A draws from `seed` in that order (float64, cast).
    Every other parameter (embeddings, norms, unadapted layers) is frozen too, as peft's LoraModel
    freezes them (`requires_grad=False`): only A and B get gradients, and every layer's backward skips
    a frozen parameter's gradient work.

    ValueError, before anything changes, for: no targets, a target that matches no Linear (the
    message lists the model's Linear layers), a Linear already adapted, a Linear whose weight is tied
    to another layer (a tied lm_head: its weight is also the token embedding), and a rank outside
    1 <= rank <= min(in, out) of a matched layer."""
    linears = {n: m for n, m in model.named_modules() if isinstance(m, Linear)}
    adapted = {f"{n}.base_layer" for n in lora_layers(model)}
    uses: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        uses[id(p)] = uses.get(id(p), 0) + 1
    order = _choose({n: (m.weight.data.shape, uses[id(m.weight)] > 1) for n, m in linears.items()},
                    rank, targets, adapted)
    rng = np.random.default_rng(seed)
    for n in order:
        _set_child(model, n, LoRALinear(linears[n], rank, alpha, dropout, rng=rng))
    adapters = {id(p) for p in lora_parameters(model).values()}
    for p in model.parameters():
        if id(p) not in adapters:
            freeze(p)
    name_dropouts(model)                                       # the adapters' dropouts are keyed by path
    return order


def lora_parameter_shapes(config, rank: int, targets) -> dict[str, tuple[int, ...]]:
    """Every parameter of `GPT(config)` after `apply_lora(model, rank, alpha, dropout, targets)`: name ->
    shape in `named_parameters()` order, from the config alone (as `reference.model.parameter_shapes`,
    which it extends). An adapted layer `P` holds `P.lora_A` (r, in), `P.lora_B` (out, r),
    `P.base_layer.weight` (out, in) and `P.base_layer.bias` (out,) in place of `P.weight` and `P.bias`.
    ValueError as apply_lora's (a target matching no layer, a tied head, a rank too large) and for a
    rank that is not an integer >= 1. Checkpoints check an adapted model's tensors against it."""
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 1:
        raise ValueError(f"LoRA rank must be an integer >= 1, got {rank!r}")
    shapes = parameter_shapes(config)
    linears = {n[:-len(".weight")]: (s, False) for n, s in shapes.items()
               if len(s) == 2 and n.endswith(".weight") and n[:-len(".weight")] not in EMBEDDINGS}
    if config.tie_weights:                                     # the head is a Linear whose weight is wte's
        linears["lm_head"] = ((config.vocab_size, config.n_embd), True)
    chosen = set(_choose(linears, rank, targets))
    out: dict[str, tuple[int, ...]] = {}
    for name, shape in shapes.items():
        layer, _, kind = name.rpartition(".")
        if layer not in chosen:
            out[name] = shape
        elif kind == "weight":                                 # LoRALinear's own parameters, then its base's
            n_out, n_in = shape
            out.update({f"{layer}.lora_A": (rank, n_in), f"{layer}.lora_B": (n_out, rank),
                        f"{layer}.base_layer.weight": shape})
        else:
            out[f"{layer}.base_layer.{kind}"] = shape
    return out


def lora_settings(model: Module) -> dict | None:
    """The model's adapters as peft's LoraConfig names them, {"r", "lora_alpha", "lora_dropout",
    "layers": [adapted layer names, model order]}; None without adapters. ValueError when the adapters
    differ in rank, alpha or dropout (a run, a checkpoint and a peft directory hold one of each)."""
    layers = lora_layers(model)
    if not layers:
        return None
    first = next(iter(layers.values()))
    if any((m.rank, m.alpha, m.lora_dropout.p) != (first.rank, first.alpha, first.lora_dropout.p)
           for m in layers.values()):
        raise ValueError("the adapters differ in rank, alpha or dropout: expected one of each for all of them")
    return {"r": first.rank, "lora_alpha": first.alpha, "lora_dropout": first.lora_dropout.p, "layers": list(layers)}


def set_lora_masks(model: Module, masks: MaskSource | None) -> None:
    """Give every adapter's dropout its mask source for the next forward (None: dropout off)."""
    for m in lora_layers(model).values():
        m.masks = masks


def merge_lora(model: Module) -> Module:
    """Replace every LoRALinear by its base Linear with W + (alpha / r) B A, every parameter trainable
    again (peft's merge_and_unload); returns `model`. The parameter names become the base model's again."""
    for n, m in lora_layers(model).items():
        m.merge()
        _set_child(model, n, m.base_layer)
    for p in model.parameters():                               # the base layers, embeddings, norms and the rest
        unfreeze(p)
    return model
