"""Attention maps: `GPT.forward(..., return_attentions=True)` equals transformers' `output_attentions=True`
on GPT-2 and Llama directories built offline (float64, both paths), also under a KV cache and across the
fast path's query tiles; the `attention` command draws exactly those probabilities
(reference/programs/attention_map.py)."""

from __future__ import annotations

import numpy as np
import pytest

from oracle.core.tolerance import FLOAT64_TOL
from reference import GPT, GPTConfig, KVCache
from reference.fast import attention as fast_attention
from reference.fast import use_kernels
from reference.programs.attention_map import attention_main, attention_maps, draw_attention, select, token_labels

V, T = 61, 12


def err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def eager_float64(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """transformers' eager attention (models/llama/modeling_llama.py::eager_attention_forward) with the
    softmax in the inputs' dtype, where the stock one takes it in float32."""
    import torch
    from transformers.models.llama.modeling_llama import repeat_kv
    k, v = repeat_kv(key, module.num_key_value_groups), repeat_kv(value, module.num_key_value_groups)
    scores = torch.matmul(query, k.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    p = torch.softmax(scores, dim=-1)
    return torch.matmul(p, v).transpose(1, 2).contiguous(), p


@pytest.fixture(scope="module")
def hf_attentions(tmp_path_factory):
    """{arch: (ours, transformers' attentions as numpy)} for one random batch, float64."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers", reason="the hf extra (transformers) is not installed")
    from transformers import AttentionInterface, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    from oracle.bridge.hf import float64_llama
    from reference.programs import hf
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    AttentionInterface.register("eager_float64", eager_float64)
    AttentionMaskInterface.register("eager_float64", eager_mask)
    torch.manual_seed(0)
    models = {
        "gpt2": GPT2LMHeadModel(GPT2Config(
            vocab_size=V, n_positions=16, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0,
            attn_pdrop=0.0, bos_token_id=None, eos_token_id=None, initializer_range=0.2)),
        "llama": LlamaForCausalLM(LlamaConfig(
            vocab_size=V, hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=16, bos_token_id=None, eos_token_id=None,
            rope_parameters={"rope_type": "default", "rope_theta": 500.0}, initializer_range=0.2))}
    x = np.random.default_rng(0).integers(0, V, (2, T))
    out = {}
    for arch, model in models.items():
        model = model.eval().double()
        path = tmp_path_factory.mktemp(arch)
        model.save_pretrained(path)
        if arch == "llama":                                    # eager attention returns the probabilities;
            float64_llama(model)                               # GPT-2's computes in float64 as it is, Llama's
            model.set_attn_implementation("eager_float64")     # with the softmax in float64 (and RMSNorm, RoPE)
        else:
            model.set_attn_implementation("eager")
        with torch.no_grad():
            att = model(input_ids=torch.as_tensor(x), output_attentions=True).attentions
        out[arch] = (hf.from_pretrained(path, dtype="float64"), x, [a.numpy() for a in att])
    return out


@pytest.mark.parametrize("kernels", ["textbook", "fast"])
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_attentions_equal_transformers(hf_attentions, arch, kernels):
    ours, x, theirs = hf_attentions[arch]
    logits, _, mine = use_kernels(ours, kernels).forward(x, return_attentions=True)
    assert len(mine) == len(theirs)
    for layer, (a, b) in enumerate(zip(mine, theirs)):
        assert a.shape == b.shape == (2, 4, T, T)
        e = err(a, b)
        print(f"{arch} {kernels} layer {layer}: attention error {e:.1e}")
        assert e <= FLOAT64_TOL, f"layer {layer}"
    np.testing.assert_array_equal(logits, ours.forward(x)[0])  # the default call: (logits, cache), the same logits
    assert len(ours.forward(x)) == 2


@pytest.mark.parametrize("kernels,tile", [("textbook", None), ("fast", None), ("fast", 2)])
@pytest.mark.parametrize("pos,kv", [("learned", 4), ("rope", 2), ("alibi", 1)])
def test_attentions_under_a_cache_equal_the_full_rows(kernels, tile, pos, kv, monkeypatch):
    """A prompt of 5 then a chunk of 3 through the KV cache give (B, H, T, S) maps, S the keys seen so far,
    equal to rows of the full forward's maps, on both paths; with the fast path's query tiles of 2 rows the
    entries above the tiles, never computed, come out 0."""
    if tile is not None:
        monkeypatch.setattr(fast_attention, "QUERY_TILE", tile)
    config = GPTConfig(vocab_size=17, block_size=8, n_layer=2, n_head=4, n_kv_head=kv, n_embd=16, pos=pos,
                       dtype="float64")
    model = use_kernels(GPT(config, seed=1), kernels)
    idx = np.random.default_rng(2).integers(0, 17, (2, 8))
    _, _, full = model.forward(idx, return_attentions=True)
    textbook = use_kernels(GPT(config, seed=1), "textbook").forward(idx, return_attentions=True)[2]
    cache = KVCache(config, batch=2)
    _, _, first = model.forward(idx[:, :5], kv_cache=cache, return_attentions=True)
    _, _, second = model.forward(idx[:, 5:], kv_cache=cache, return_attentions=True)
    for f, t, a, b in zip(full, textbook, first, second):
        np.testing.assert_allclose(f, t, rtol=1e-12, atol=1e-15)
        assert np.all(np.triu(f, 1) == 0) and np.allclose(f.sum(-1), 1.0)
        np.testing.assert_allclose(a, f[:, :, :5, :5], rtol=1e-12, atol=1e-15)
        assert b.shape == (2, 4, 3, 8)
        np.testing.assert_allclose(b, f[:, :, 5:, :], rtol=1e-12, atol=1e-15)


# ------------------------------------------------------------------------------------------ drawing


def tiny():
    from reference.programs.tokenizers import CharTokenizer
    tok = CharTokenizer.from_text("ab c\nde")
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=8, n_layer=3, n_head=2, n_embd=8), seed=0)
    return model, tok


@pytest.mark.parametrize("layer,head,shape", [(None, None, (3, 2)), (1, None, (1, 2)), (None, 0, (3, 1)), (2, 1, (1, 1))])
def test_drawn_matrices_are_the_probabilities(layer, head, shape):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt
    model, tok = tiny()
    ids = tok.encode("ab c\nd")
    maps = attention_maps(model, ids)
    labels = token_labels(tok, ids)
    assert labels == ["a", "b", "␣", "c", "\\n", "d"]
    fig = draw_attention(maps, labels, layer=layer, head=head)
    panels = [ax for ax in fig.axes if ax.images and ax.get_title()]
    assert len(panels) == shape[0] * shape[1]
    layers = range(3) if layer is None else [layer]
    heads = range(2) if head is None else [head]
    for ax, (l, h) in zip(panels, [(l, h) for l in layers for h in heads]):
        assert ax.get_title() == f"layer {l}, head {h}"
        np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), maps[l, h])
        assert ax.images[0].get_clim() == (0.0, 1.0)
    bottom_left = panels[(shape[0] - 1) * shape[1]]
    assert [t.get_text() for t in bottom_left.get_xticklabels()] == labels
    assert [t.get_text() for t in bottom_left.get_yticklabels()] == labels
    assert any(ax.get_ylabel() == "attention probability" for ax in fig.axes)   # the colour bar
    plt.close(fig)


def test_layer_and_head_out_of_range_are_one_line():
    maps = np.zeros((3, 2, 4, 4))
    with pytest.raises(ValueError, match="^--layer 3 is out of range: the model has 3 layers, numbered 0 to 2$"):
        select(maps, layer=3)
    with pytest.raises(ValueError, match="^--head -1 is out of range: the model has 2 heads, numbered 0 to 1$"):
        select(maps, head=-1)


def test_attention_command(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from reference.programs.checkpoint import save_checkpoint
    model, tok = tiny()
    ckpt = tmp_path / "ckpt.safetensors"
    save_checkpoint(ckpt, model, tokenizer=tok)
    out = tmp_path / "maps"
    assert attention_main(["--ckpt", str(ckpt), "--prompt", "abc", "-o", str(out), "--layer", "1"]) == 0
    assert (tmp_path / "maps.png").stat().st_size > 0
    assert f"wrote {tmp_path / 'maps.png'}" in capsys.readouterr().out
    for argv, message in ((["--head", "2"], "error: --head 2 is out of range: the model has 2 heads, numbered 0 to 1"),
                          (["--prompt", "abcdeabcd"], "error: the prompt has 9 tokens, more than the context "
                                                      "(block_size 8); shorten it to at most 8 tokens"),
                          (["--prompt", ""], "error: the prompt is empty")):
        args = ["--ckpt", str(ckpt), "--prompt", "abc", "-o", str(out), *argv]
        assert attention_main(args) == 2
        err_lines = capsys.readouterr().err.strip().splitlines()
        assert len(err_lines) == 1 and err_lines[0].startswith(message), err_lines


def saved_tiny(tmp_path):
    from reference.programs.checkpoint import save_checkpoint
    model, tok = tiny()
    save_checkpoint(tmp_path / "ckpt.safetensors", model, tokenizer=tok)
    return str(tmp_path / "ckpt.safetensors")


def test_out_directory_gets_attention_png(tmp_path, capsys):
    """`-o DIR` writes DIR/attention.png (plot's loss_curve.png was the name once: planted, it fails here)."""
    pytest.importorskip("matplotlib")
    ckpt, out = saved_tiny(tmp_path), tmp_path / "maps"
    out.mkdir()
    assert attention_main(["--ckpt", ckpt, "--prompt", "abc", "-o", str(out)]) == 0
    assert [p.name for p in out.iterdir()] == ["attention.png"]
    assert capsys.readouterr().out == f"wrote {out / 'attention.png'}\n"


def test_a_failed_write_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    """A full disk while the PNG is written: one line naming the PNG (not the temporary file) and what to
    do, exit status 2, and no file left behind."""
    pytest.importorskip("matplotlib")
    import errno
    import os
    from reference.programs import atomic
    ckpt, out = saved_tiny(tmp_path), tmp_path / "out"
    out.mkdir()

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(atomic.os, "fsync", full)
    assert attention_main(["--ckpt", ckpt, "--prompt", "abc", "-o", str(out / "maps")]) == 2
    said = capsys.readouterr()
    assert said.out == ""
    assert said.err == f"error: cannot write {out / 'maps.png'}: No space left on device; free some space and try again\n"
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("layer,head", [(None, None), (1, None), (None, 0), (2, 1)])
def test_the_title_sits_above_the_panels(layer, head):
    """The figure's title is within 0.2 inch of the panels' titles, whatever the grid's shape (planted:
    without the constrained layout the 3 x 2 grid leaves half an inch of blank between them)."""
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt
    model, tok = tiny()
    ids = tok.encode("ab c\nd")
    fig = draw_attention(attention_maps(model, ids), token_labels(tok, ids), layer=layer, head=head)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    panel_top = max(ax.title.get_window_extent(renderer).y1 for ax in fig.axes if ax.images and ax.get_title())
    gap = (fig._suptitle.get_window_extent(renderer).y0 - panel_top) / fig.dpi        # inches
    assert 0 <= gap < 0.2, gap
    plt.close(fig)


@pytest.mark.parametrize("prompt,rotation", [("ab c\nd", 0.0), ("ab\n", 90.0)])
def test_key_labels_stand_upright_when_short(prompt, rotation):
    """Labels of one or two characters are drawn upright (a letter on its side reads slowly); a longer
    one, such as a BPE token, turns the key axis' labels by 90 degrees so they do not overlap."""
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt
    model, tok = tiny()
    ids = tok.encode(prompt)
    labels = token_labels(tok, ids)                     # "\n" is drawn as the two characters \n
    labels[-1] = labels[-1] if rotation == 0.0 else "lo␣"
    fig = draw_attention(attention_maps(model, ids), labels, layer=0, head=0)
    panel = next(ax for ax in fig.axes if ax.images and ax.get_title())
    assert {t.get_rotation() for t in panel.get_xticklabels()} == {rotation}
    plt.close(fig)
