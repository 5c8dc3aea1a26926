"""`python -m reference attention --ckpt FILE | --init-from DIR --prompt TEXT -o maps.png`: attention maps.

Runs the prompt through the model once (`GPT.forward(..., return_attentions=True)`) and draws each
layer's attention probabilities as a grid of heatmaps: one row per layer, one column per head (or the
one layer, head or both chosen with --layer / --head, counted from 0). In each panel row t is query
token t and column s key token s, both labelled with the prompt's tokens; the colour is the probability
on one scale from 0 to 1 shared by every panel, with its colour bar. Derived in docs/attention-maps.md.
matplotlib is imported only here, lazily, with the Agg backend (as reference/programs/plot.py). The PNG
is written atomically (reference/programs/atomic.py); `-o DIR` writes DEFAULT_NAME inside DIR.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np

from ..fast import use_kernels
from ..model import GPT
from .atomic import atomic_write, os_error_line
from .options import add_kernels_argument
from .plot import _pyplot, png_path

DEFAULT_NAME = "attention.png"

__all__ = ["attention_maps", "select", "token_labels", "draw_attention", "out_file", "plot_attention", "add_arguments", "run"]


def attention_maps(model: GPT, ids) -> np.ndarray:
    """Attention probabilities of one prompt: (T,) token ids -> (n_layer, n_head, T, T) float64.
    ValueError for an empty prompt or one longer than the context (block_size)."""
    ids = np.asarray(ids)
    if ids.size == 0:
        raise ValueError("the prompt is empty: give at least one token")
    if ids.size > model.config.block_size:
        raise ValueError(f"the prompt has {ids.size} tokens, more than the context (block_size "
                         f"{model.config.block_size}); shorten it to at most {model.config.block_size} tokens")
    _, _, maps = model.forward(ids.reshape(1, -1), return_attentions=True)
    return np.stack([m[0] for m in maps]).astype(np.float64)


def select(maps: np.ndarray, layer: int | None = None, head: int | None = None) -> tuple[np.ndarray, list, list]:
    """(panels (rows, cols, T, T), layer numbers, head numbers): every layer and head, or the one layer
    and/or head given. ValueError naming an index out of range."""
    n_layer, n_head = maps.shape[:2]
    for name, value, n in (("layer", layer, n_layer), ("head", head, n_head)):
        if value is not None and not 0 <= value < n:
            raise ValueError(f"--{name} {value} is out of range: the model has {n} {name}s, numbered 0 to {n - 1}")
    layers = list(range(n_layer)) if layer is None else [layer]
    heads = list(range(n_head)) if head is None else [head]
    return maps[np.ix_(layers, heads)], layers, heads


def token_labels(tokenizer, ids) -> list[str]:
    """One readable label per token: its text, with a newline shown as \\n and a space as a visible ␣."""
    labels = []
    for i in np.asarray(ids).tolist():
        text = tokenizer.decode([i]) if tokenizer is not None else str(i)
        labels.append(text.replace("\n", "\\n").replace(" ", "␣") or f"<{i}>")
    return labels


def draw_attention(maps: np.ndarray, labels: list[str], *, layer: int | None = None, head: int | None = None,
                   title: str | None = None):
    """The figure: a grid of panels, one per (layer, head) chosen, each `imshow` of a (T, T) map with the
    tokens on both axes, and one colour bar from 0 to 1. maps: (n_layer, n_head, T, T)."""
    plt = _pyplot()
    panels, layers, heads = select(maps, layer, head)
    rows, cols, T = len(layers), len(heads), maps.shape[-1]
    side = min(max(2.4, 0.16 * T), 8.0)                        # inches per panel: room for T labels
    # constrained layout: the title sits right above the panels, whatever the colour bar takes
    fig, axes = plt.subplots(rows, cols, figsize=(side * cols + 1.2, side * rows + 0.8), dpi=100, squeeze=False,
                             layout="constrained")
    font = max(4.0, min(9.0, 200.0 / T))
    rotation = 90 if max(len(label) for label in labels) > 2 else 0   # upright letters read at a glance
    for r, l in enumerate(layers):
        for c, h in enumerate(heads):
            ax = axes[r, c]
            image = ax.imshow(panels[r, c], cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_title(f"layer {l}, head {h}", fontsize=9)
            ax.set_xticks(range(T))
            ax.set_yticks(range(T))
            ax.set_xticklabels(labels if r == rows - 1 else [], rotation=rotation, fontsize=font)
            ax.set_yticklabels(labels if c == 0 else [], fontsize=font)
            if r == rows - 1:
                ax.set_xlabel("key (attended to)", fontsize=8)
            if c == 0:
                ax.set_ylabel("query", fontsize=8)
    fig.colorbar(image, ax=axes, shrink=0.8, label="attention probability")
    fig.suptitle(title or "attention probabilities (row: query token; column: the key tokens it attends to)",
                 fontsize=10)
    return fig


def out_file(out_path) -> Path:
    """The PNG that `-o out_path` names: out_path, with ".png" added to a name without a suffix, or
    DEFAULT_NAME inside an existing directory."""
    out_path = Path(out_path)
    return out_path / DEFAULT_NAME if out_path.is_dir() else png_path(out_path)


def plot_attention(maps: np.ndarray, labels: list[str], out_path, **options) -> Path:
    """draw_attention(...) saved as PNG, atomically, to out_file(out_path); returns that path. OSError if
    it cannot be written (nothing is left behind)."""
    plt = _pyplot()
    out_path = out_file(out_path)
    fig = draw_attention(maps, labels, **options)
    try:
        png = io.BytesIO()
        fig.savefig(png, format="png", bbox_inches="tight")
    finally:
        plt.close(fig)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out_path, png.getbuffer())
    return out_path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--ckpt", help="checkpoint file written by `train`")
    model.add_argument("--init-from", "--init_from", dest="init_from", metavar="DIR",
                       help="a Hugging Face GPT-2 or Llama model directory instead of --ckpt (needs the hf extra)")
    parser.add_argument("--prompt", required=True, help="the text whose attention is drawn (at most block_size tokens)")
    parser.add_argument("-o", "--out", default=DEFAULT_NAME,
                        help=f"PNG to write; .png is added to a name without a suffix; an existing directory gets "
                             f"{DEFAULT_NAME} inside it (default {DEFAULT_NAME})")
    parser.add_argument("--layer", type=int, default=None, help="draw this layer only, from 0 (default: every layer)")
    parser.add_argument("--head", type=int, default=None, help="draw this head only, from 0 (default: every head)")
    add_kernels_argument(parser)


def run(args: argparse.Namespace) -> int:
    from .checkpoint import CheckpointError, build_model, load_checkpoint
    from .tokenizers import tokenizer_from_dict
    try:
        if args.init_from:
            from .sample import load_hf_dir
            model, tok = load_hf_dir(args.init_from)
        else:
            ckpt = load_checkpoint(args.ckpt)
            if ckpt.tokenizer is None:
                raise ValueError(f"{args.ckpt} holds no tokenizer, so the prompt cannot be encoded")
            tok, model = tokenizer_from_dict(ckpt.tokenizer), build_model(ckpt)
        use_kernels(model, args.kernels)
        if not args.prompt:
            raise ValueError("the prompt is empty: give at least one character with --prompt")
        try:
            ids = tok.encode(args.prompt)
        except ValueError as e:
            raise ValueError(f"the prompt cannot be encoded with the model's vocabulary: {e}") from None
        maps = attention_maps(model, ids)
        try:
            path = plot_attention(maps, token_labels(tok, ids), args.out, layer=args.layer, head=args.head)
        except OSError as e:                      # read-only, full, ...: name the PNG, not the temporary file
            raise ValueError(os_error_line(OSError(e.errno, e.strerror), "choose a writable -o",
                                           where=out_file(args.out))) from None
    except (CheckpointError, FileNotFoundError, ValueError, OSError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


def attention_main(argv: list[str] | None = None) -> int:
    """`attention` on its own: parse argv (default sys.argv[1:]) and run."""
    parser = argparse.ArgumentParser(prog="python -m reference attention", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))
