"""The programs around the model: the command line (`python -m reference train|sample|plot|export`),
tokenizers and prepared data, training, checkpoints, sampling, Hugging Face import and export, and the
loss plot.

They import the textbook model (reference/) and run it on the fast path (reference/fast/) by default;
optional libraries (tqdm, matplotlib, tokenizers) are imported only where a command needs them.
The map: docs/architecture.md.
"""
