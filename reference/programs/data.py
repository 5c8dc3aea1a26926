"""Prepared data for the NumPy GPT: train/val splits, batch sampling, and reading what
``data/prepare.py`` wrote.

:func:`resolve_data_dir` finds a prepared-data directory, :func:`load_meta` and :func:`load_split`
read its ``meta.json`` and token files, :func:`split_train_val` splits token ids, and
:func:`get_batch` samples random ``(inputs, targets)`` windows from a token array.  The
tokenizers that ``meta.json`` names are ``reference.programs.tokenizers``.

Only numpy, the standard library and ``reference.programs.tokenizers`` are imported at module level.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .tokenizers import tokenizer_digest, tokenizer_from_dict

__all__ = [
    "get_batch",
    "split_train_val",
    "load_meta",
    "load_split",
    "resolve_data_dir",
    "PACKAGE_ROOT",
    "SPLITS",
]

IdArray = npt.NDArray[np.int64]

#: The splits written by ``data/prepare.py``.
SPLITS = ("train", "val")

_PREPARE_HINT = "run `python data/prepare.py` first to create it"


def get_batch(
    data: npt.ArrayLike,
    batch_size: int,
    block_size: int,
    rng: np.random.Generator,
) -> tuple[IdArray, IdArray]:
    """Sample ``batch_size`` random windows of ``block_size`` tokens from ``data``.

    Returns ``(x, y)``, both int64 of shape ``(batch_size, block_size)``, where
    ``y`` is ``x`` shifted one token to the left (the next-token targets).
    """
    data = np.asarray(data)
    if data.ndim != 1:
        raise ValueError(f"data must be a 1-D array of token ids, got shape {data.shape}")
    if batch_size < 1 or block_size < 1:
        raise ValueError(
            f"batch_size and block_size must be >= 1, got {batch_size} and {block_size}"
        )
    if len(data) < block_size + 1:
        raise ValueError(
            f"data has {len(data)} tokens, fewer than block_size + 1 = {block_size + 1} "
            f"needed for one (input, target) window of block_size={block_size}"
        )
    ix = rng.integers(0, len(data) - block_size, size=batch_size)
    windows = np.lib.stride_tricks.sliding_window_view(data, block_size + 1)[ix]
    windows = windows.astype(np.int64)
    return windows[:, :-1], windows[:, 1:]


def split_train_val(ids: npt.ArrayLike, val_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Split ``ids`` into the first ``1 - val_fraction`` (train) and the rest (val)."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be strictly between 0 and 1, got {val_fraction}")
    ids = np.asarray(ids)
    n = int(len(ids) * (1.0 - val_fraction))
    return ids[:n], ids[n:]


#: Where a relative data directory is also looked for: the checkout holding this package (where
#: ``data/prepare.py`` writes ``data/shakespeare_char``), so that commands work from any directory.
PACKAGE_ROOT = Path(__file__).resolve().parents[2]      # the repository: reference/programs/data.py -> ../../..


def resolve_data_dir(data_dir: str | Path) -> Path:
    """The prepared-data directory ``data_dir`` names: as given (relative to the current directory), or,
    for a relative path that does not exist there, relative to :data:`PACKAGE_ROOT`.

    FileNotFoundError names every place looked in; NotADirectoryError a path that is a file."""
    given = Path(data_dir)
    candidates = [given]
    if not given.is_absolute() and (PACKAGE_ROOT / given).resolve() != given.resolve():
        candidates.append(PACKAGE_ROOT / given)
    for path in candidates:
        if path.is_dir():
            return path
        if path.exists():
            raise NotADirectoryError(f"data_dir {path} is a file, not a directory; expected the directory "
                                     f"that data/prepare.py writes (train.bin, val.bin, meta.json)")
    looked = " and ".join(str(p.resolve()) for p in candidates)
    raise FileNotFoundError(f"no prepared data: looked for {data_dir} in {looked}; {_PREPARE_HINT}")


_META_TYPES = {"tokenizer": dict, "dtype": str}


def load_meta(data_dir: str | Path) -> dict[str, Any]:
    """Read ``meta.json`` written by ``data/prepare.py`` in ``data_dir``, checking the keys training
    needs ("tokenizer", "dtype"); ValueError names a missing or malformed one."""
    path = Path(data_dir) / "meta.json"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"no prepared data: {path} is missing; {_PREPARE_HINT}") from None
    except NotADirectoryError:
        raise NotADirectoryError(f"data_dir {data_dir} is a file, not a directory; expected the directory "
                                 f"that data/prepare.py writes") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text ({e.reason}); {_PREPARE_HINT} again") from None
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); {_PREPARE_HINT} again") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(meta).__name__}; {_PREPARE_HINT} again")
    for key, kind in _META_TYPES.items():
        if key not in meta:
            raise ValueError(f"{path} has no {key!r} key (it has {sorted(meta)}); the data was not written by "
                             f"this version of data/prepare.py: {_PREPARE_HINT} again")
        if not isinstance(meta[key], kind):
            raise ValueError(f"{path}: {key!r} must be a JSON {'object' if kind is dict else 'string'}, "
                             f"got {meta[key]!r}")
    try:
        dtype = np.dtype(meta["dtype"])
    except TypeError:
        dtype = None
    if dtype is None or dtype.kind not in "ui":
        raise ValueError(f"{path}: 'dtype' must name an integer dtype such as 'uint16', got {meta['dtype']!r}")
    recorded = meta.get("tokenizer_digest")                  # absent in data prepared before it was recorded
    if recorded is not None and recorded != tokenizer_digest(tokenizer_from_dict(meta["tokenizer"])):
        raise ValueError(f"{path}: 'tokenizer_digest' {recorded} is not the digest of its 'tokenizer' "
                         f"({tokenizer_digest(meta['tokenizer'])}): the file was edited or is corrupt; "
                         f"{_PREPARE_HINT} again")
    return meta


def load_split(data_dir: str | Path, split: str) -> np.ndarray:
    """Read the token ids of ``split`` ("train" or "val") from ``data_dir``.

    The ids keep the on-disk dtype recorded in ``meta.json`` (uint16). A file whose size is not a whole
    number of ids, or that holds another count than meta.json records, is refused (truncated or corrupt).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    meta = load_meta(data_dir)
    path = Path(data_dir) / f"{split}.bin"
    if not path.is_file():
        raise FileNotFoundError(f"no prepared data: {path} is missing; {_PREPARE_HINT}")
    dtype = np.dtype(meta["dtype"])
    size = path.stat().st_size
    if size % dtype.itemsize:
        raise ValueError(f"{path} is {size} bytes, not a whole number of {dtype} ids ({dtype.itemsize} bytes each): "
                         "the data is truncated or corrupt, re-run `python data/prepare.py`")
    ids = np.fromfile(path, dtype=dtype)
    expected = meta.get(f"{split}_tokens")
    if expected is not None and expected != len(ids):
        raise ValueError(
            f"{path} holds {len(ids)} tokens but meta.json says {expected}; "
            "the data is corrupt or partially written, re-run `python data/prepare.py`"
        )
    return ids
