"""A Hugging Face directory whose config.json ties the embeddings (tie_word_embeddings) but whose weights
also store lm_head.weight: loaded as transformers loads it. A stored head equal to the embedding is a tied
copy (dropped); one that differs makes transformers load the model untied, with a warning, and so do we:
the logits of both match in float64, and one warning line says what happened."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers", reason="the hf extra (transformers) is not installed")

from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM  # noqa: E402

from oracle.bridge.hf import float64_llama
from oracle.core.tolerance import FLOAT64_TOL
from reference.programs import hf  # noqa: E402

transformers.logging.set_verbosity_error()
transformers.logging.disable_progress_bar()
V = 61


def tied_dir(tmp_path, arch: str, head: str) -> tuple:
    torch.manual_seed(0)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=40, num_hidden_layers=1,
                                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16,
                                             tie_word_embeddings=True, bos_token_id=None, eos_token_id=None))
        embedding = "model.embed_tokens.weight"
    else:
        model = GPT2LMHeadModel(GPT2Config(vocab_size=V, n_positions=16, n_embd=32, n_layer=1, n_head=4))
        embedding = "transformer.wte.weight"
    model.save_pretrained(tmp_path)
    file = tmp_path / "model.safetensors"
    tensors = load_file(file)
    tensors["lm_head.weight"] = tensors[embedding].clone() + (0.5 if head == "differs" else 0.0)
    save_file(tensors, file, metadata={"format": "pt"})
    return tmp_path, tensors


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("head", ["equal", "differs"])
def test_a_stored_head_loads_as_transformers_loads_it(tmp_path, capsys, arch, head):
    """Before: the Llama directory was refused ("unexpected tensor lm_head.weight")."""
    path, tensors = tied_dir(tmp_path, arch, head)
    ours = hf.from_pretrained(path, dtype="float64")
    err = capsys.readouterr().err
    theirs = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64).eval()
    if arch == "llama":
        float64_llama(theirs)                                # every step in float64 (oracle/bridge/hf.py)
    assert (theirs.lm_head.weight is theirs.get_input_embeddings().weight) == (head == "equal")
    x = np.random.default_rng(0).integers(0, V, (2, 8))
    with torch.no_grad():
        want = theirs(input_ids=torch.as_tensor(x)).logits.numpy()
    got = ours.forward(x)[0]
    assert np.abs(got - want).max() / np.abs(want).max() <= FLOAT64_TOL
    assert ours.config.tie_weights == (head == "equal")
    if head == "differs":
        assert err.count("\n") == 1 and err.startswith(f"warning: {path}: lm_head.weight differs from ")
        assert "loaded untied, as transformers does" in err
        assert np.array_equal(ours.lm_head.weight.data, tensors["lm_head.weight"].double().numpy())
    else:
        assert err == ""


def test_train_init_from_an_untied_head_keeps_it(tmp_path):
    from reference.programs.training.settings import TrainConfig, init_config
    path, _ = tied_dir(tmp_path, "llama", "differs")
    assert init_config(TrainConfig(), path).model_config(V).tie_weights is False
