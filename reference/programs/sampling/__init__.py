"""Sampling, for use from code and by the `sample` command (reference/programs/sample.py):

- logits_process.py: the next-token rule: penalties, temperature, top-k, top-p, min-p, the draw.
- generation.py: `generate` and `iter_generate`, with a key/value cache and nanoGPT's context cropping.
- stream.py: `TextStream`, token ids to text as they are drawn.

    from reference.programs.sampling.generation import generate
    out = generate(model, idx, 100, rng=np.random.default_rng(0))
"""
