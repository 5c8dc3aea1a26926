"""The run's data: its train and val splits, read and checked before any model is built.

The splits come from `config.data_dir` (written by data/prepare.py: `meta.json`, the token files, and for
SFT or DPO data the loss masks, example lengths or preference pairs beside them) or are given as 1-D token
arrays with a tokenizer or a vocab_size. Each split is checked: integer token ids, each in
[0, vocab_size) (`reference.model.check_token_ids`), packed data at least one window of block_size + 1
tokens.
SFT data gives windows of the packed examples, only those holding a response token drawn
(`sft.window_starts`), or with `packing` False one whole example per row, right-padded
(`sft.PaddedExamples`); DPO data (`--objective dpo`) brings its pairs and its objective
(reference/programs/dpo.py::DPOObjective), which draws its own batches. A run from a model directory
(`--init-from DIR`) keeps the data's tokenizer only if it is the directory's (`model_tokenizer`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...model import check_token_ids
from .. import dpo, sft
from ..data import load_meta, load_split, resolve_data_dir
from ..tokenizers import describe_tokenizer, tokenizer_digest, tokenizer_from_dict
from .settings import TrainConfig

__all__ = ["Splits", "load_splits", "model_tokenizer"]


@dataclass
class Splits:
    """What `load_splits` found: the two splits (1-D token arrays), the tokenizer (None when only a
    vocab_size was given) and vocab_size, `source` ("the given data" or "the data in DIR", for messages),
    and the SFT layout: `loss_masks` {"train", "val"} (1 on response tokens), `window_starts` (packed:
    where a window holding a response starts) or `examples` (one example per row); `objective`: the one
    given, or DPO's from preference-pair data."""
    train: np.ndarray
    val: np.ndarray
    tokenizer: object
    vocab_size: int
    source: str
    loss_masks: dict | None
    window_starts: dict | None
    examples: dict | None
    objective: object


def _check_split_ids(split: str, data: np.ndarray, vocab_size: int) -> None:
    """`reference.model.check_token_ids` on a data split, its message naming the split and the first bad id
    in file order: "the val split's token id -1 is out of range for vocab_size 65 (expected 0 <= id < 65)"."""
    check_token_ids(data, vocab_size, what=f"the {split} split's token id")


def load_splits(config: TrainConfig, *, train_data=None, val_data=None, tokenizer=None,
                vocab_size: int | None = None, loss_masks: tuple | None = None,
                example_lengths: tuple | None = None, objective=None) -> Splits:
    """The splits of `config.data_dir`, or `train_data` and `val_data` with a `tokenizer` or a
    `vocab_size`, `loss_masks` and `example_lengths` (Trainer's keyword arguments), checked: ValueError
    says what is wrong, naming the split; data/prepare.py's files are read through reference/programs/data.py,
    sft.py and dpo.py, with their checks."""
    if (train_data is None) != (val_data is None):
        raise ValueError("give both train_data and val_data, or neither (to read config.data_dir)")
    source = "the given data"
    if train_data is None:
        data_dir = resolve_data_dir(config.data_dir)
        meta = load_meta(data_dir)                       # checks a recorded tokenizer_digest
        tokenizer = tokenizer_from_dict(meta["tokenizer"])
        train_data, val_data = load_split(data_dir, "train"), load_split(data_dir, "val")
        source = f"the data in {data_dir}"
        if meta.get("sft"):
            loss_masks = tuple(sft.load_mask(data_dir, k, len(d)) for k, d in (("train", train_data),
                                                                               ("val", val_data)))
            if not config.packing:
                example_lengths = tuple(sft.load_lengths(data_dir, k, meta["sft"].get(f"{k}_examples"), len(d))
                                        for k, d in (("train", train_data), ("val", val_data)))
        if bool(meta.get("dpo")) != (config.objective == "dpo"):
            raise ValueError(f"the data in {data_dir} is {'preference pairs' if meta.get('dpo') else 'not preference pairs'}"
                             f" but the objective is {config.objective}: expected --objective dpo with data from "
                             "python data/prepare.py --dpo FILE.jsonl, and --objective lm with any other")
        if meta.get("dpo") and objective is None:
            pairs = {k: dpo.load_pairs(data_dir, k, d) for k, d in (("train", train_data), ("val", val_data))}
            for k, enc in pairs.items():
                dpo.check_lengths(enc, config.block_size, where=f"{data_dir}: {k} pair")
            objective = dpo.DPOObjective(pairs["train"], pairs["val"], config.beta)
    if tokenizer is not None:
        vocab_size = tokenizer.vocab_size
    if vocab_size is None:
        raise ValueError("give a tokenizer or a vocab_size with train_data/val_data")
    train_data, val_data = np.asarray(train_data), np.asarray(val_data)
    if not config.packing and (loss_masks is None or example_lengths is None):
        raise ValueError(f"--no-packing lays out SFT examples one per row, but {source} "
                         f"{'is not SFT data' if loss_masks is None else 'gives no example lengths'}: expected data "
                         "from python data/prepare.py --sft FILE.jsonl, or --packing")
    for split, data in (("train", train_data), ("val", val_data)):
        if data.ndim != 1 or not np.issubdtype(data.dtype, np.integer):
            raise ValueError(f"{split} data must be a 1-D array of token ids, got {data.dtype} {data.shape}")
        if len(data) < config.block_size + 1 and config.packing and objective is None:   # DPO: rows are pairs
            raise ValueError(f"the {split} split has {len(data)} tokens, too few for one window of "
                             f"block_size {config.block_size} (+1 target); use a smaller block_size"
                             + (", or --no-packing (one example per row)" if loss_masks is not None else ""))
        _check_split_ids(split, data, vocab_size)
    masks = None if loss_masks is None else dict(zip(("train", "val"), loss_masks))
    window_starts = examples = None
    if not config.packing:                              # one example per row (sft.PaddedExamples)
        examples = {k: sft.PaddedExamples(d, masks[k], n, config.block_size, f"the {k} split's example")
                    for k, d, n in (("train", train_data, example_lengths[0]), ("val", val_data, example_lengths[1]))}
    elif masks is not None:
        window_starts = {k: sft.window_starts(np.asarray(m), config.block_size) for k, m in masks.items()}
        for k, starts in window_starts.items():
            if len(masks[k]) != len(train_data if k == "train" else val_data):
                raise ValueError(f"the {k} loss mask has {len(masks[k])} entries for "
                                 f"{len(train_data if k == 'train' else val_data)} tokens: expected one per token")
            if starts.size == 0:
                raise ValueError(f"no window of block_size {config.block_size} in the {k} split holds a response "
                                 "token: every target would be ignored (expected SFT data with responses)")
    return Splits(train_data, val_data, tokenizer, vocab_size, source, masks, window_starts, examples, objective)


def model_tokenizer(tokenizer, source: str, init_from):
    """The tokenizer a run from the model directory `init_from` keeps: the data's (`tokenizer`, prepared
    as `source` says), checked to be the directory's when the directory has tokenizer files: the same
    vocabulary size is not enough, two tokenizers of one size give other ids for the same text. Data whose
    tokenizer carries no settings (prepared before they were carried) takes the directory's special
    tokens and chat template (reference/programs/tokenizer_settings.py), so the checkpoint keeps them."""
    from ..tokenizer_settings import tokenizer_from_dir
    from ..tokenizers import BPE_FILES
    if tokenizer is None or not any((Path(init_from) / f).is_file() for f in BPE_FILES):
        return tokenizer
    theirs = tokenizer_from_dir(init_from)
    if tokenizer_digest(theirs) != tokenizer_digest(tokenizer):
        raise ValueError(f"tokenizer mismatch: {source} was prepared with tokenizer "
                         f"{describe_tokenizer(tokenizer)}, the model in {init_from} has "
                         f"{describe_tokenizer(theirs)}; prepare the data with the model's tokenizer: "
                         f"python data/prepare.py --tokenizer {init_from}")
    if tokenizer.tokenizer_config is None and tokenizer.chat_template is None:
        return theirs                                     # the same ids, and the directory's settings
    return tokenizer
