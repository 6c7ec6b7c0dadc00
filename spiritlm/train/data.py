"""The training recipe's view of :mod:`spiritlm.data`: tokenizer and loaders from a config."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from spiritlm.train.config import TrainConfig


def tokenizer_path(config: TrainConfig) -> Path:
    """``data.tokenizer``, or ``tokenizer.model`` in ``data.data_dir``."""
    if config.data.tokenizer:
        return Path(config.data.tokenizer)
    return Path(config.data.data_dir) / "tokenizer.model"


def load_tokenizer(config: TrainConfig):
    """The :class:`~spiritlm.text_tokenizer.SpiritTextTokenizer` of the run."""
    from spiritlm.text_tokenizer import SpiritTextTokenizer

    path = tokenizer_path(config)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: text tokenizer not found (set data.tokenizer or build the data first)")
    return SpiritTextTokenizer.load(path)


def build_loaders(
    config: TrainConfig, tokenizer: Any, rank: int, world_size: int
) -> tuple[Any, dict[str, Callable[[], Iterable[dict[str, Any]]]]]:
    """The resumable :class:`~spiritlm.data.loader.PackedLoader` of this rank and, per validation
    subset, a factory of a fresh pass over at most ``data.val_batches`` batches of ``data.val_dir``
    (subsets absent from it are skipped)."""
    from spiritlm.data import LoaderConfig, PackedLoader, TokenDir, ValidationLoader

    d = config.data
    for name, directory in (("data.data_dir", d.data_dir), ("data.val_dir", d.val_dir)):
        if directory and not (Path(directory) / "index.json").is_file():
            raise FileNotFoundError(f"{directory}: no index.json ({name} is not a token directory of `spiritlm data build`)")
    weights = {k: float(v) for k, v in d.subset_weights.items() if v > 0}
    train_cfg = LoaderConfig(
        data_dir=d.data_dir, seq_len=d.seq_len, batch_size=d.batch_size, subset_weights=weights,
        seed=d.seed, rank=rank, world_size=world_size,
    )
    train_loader = PackedLoader(train_cfg)
    val: dict[str, Callable[[], Iterable[dict[str, Any]]]] = {}
    if d.val_dir:
        val_tokens = TokenDir(d.val_dir)
        val_cfg = LoaderConfig(
            data_dir=d.val_dir, seq_len=d.seq_len, batch_size=d.batch_size, seed=d.seed, rank=rank, world_size=world_size
        )
        for subset in d.val_subsets:
            if subset in val_tokens.subsets and val_tokens[subset].num_docs >= world_size:
                loader = ValidationLoader(val_cfg, subset, tokens=val_tokens)
                val[subset] = lambda loader=loader: itertools.islice(iter(loader), d.val_batches)
    return train_loader, val
