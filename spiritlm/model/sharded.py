"""Reading sharded training checkpoints (``torch.distributed.checkpoint``) in one process.

A training checkpoint ``checkpoints/step_N/`` keeps its weights and AdamW state in ``dcp/``,
written by every rank in parallel with ``torch.distributed.checkpoint`` (DCP): ``.metadata``
(global shapes, dtypes, which byte range of which file holds which piece) and one
``__R_0.distcp`` file per rank. Keys are the flattened names ``model.<fairseq2 name>`` and
``optim.<fairseq2 name>.{step,exp_avg,exp_avg_sq}``. Any world size, one process included,
can read it: DCP reassembles whatever pieces the reader asks for (resharding).

This module is the single-process reader: :func:`iter_model_tensors` yields one whole tensor
at a time (the streaming export and ``load_any_model`` use it), so reading a 7B checkpoint holds
one tensor plus what the caller keeps. Nothing is unpickled: the checkpoints hold tensors only,
and :class:`WeightsOnlyLoadPlanner` reads any non-tensor entry with ``weights_only=True``.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor

DCP_DIR = "dcp"
MODEL_PREFIX = "model."
OPTIM_PREFIX = "optim."

__all__ = [
    "DCP_DIR",
    "MODEL_PREFIX",
    "OPTIM_PREFIX",
    "WeightsOnlyLoadPlanner",
    "is_sharded_checkpoint",
    "read_metadata",
    "tensor_entries",
    "check_storage",
    "load_tensors",
    "iter_model_tensors",
]


def _planner_base():
    from torch.distributed.checkpoint import DefaultLoadPlanner

    return DefaultLoadPlanner


class WeightsOnlyLoadPlanner(_planner_base()):  # type: ignore[misc]
    """DCP's default load planner, except that non-tensor entries are read with
    ``torch.load(weights_only=True)`` (the default planner unpickles them)."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        self.state_dict[read_item.dest_index.fqn] = torch.load(value, weights_only=True)


def is_sharded_checkpoint(path: str | Path) -> bool:
    """True when ``path`` holds ``dcp/.metadata`` (a checkpoint of the training recipe)."""
    return (Path(path) / DCP_DIR / ".metadata").is_file()


def read_metadata(path: str | Path):
    """The DCP ``Metadata`` of checkpoint ``path`` (raises whatever the reader raises)."""
    from torch.distributed.checkpoint import FileSystemReader

    return FileSystemReader(str(Path(path) / DCP_DIR)).read_metadata()


def tensor_entries(metadata, prefix: str = MODEL_PREFIX) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """``{name without prefix: (global shape, dtype)}`` of the tensors stored under ``prefix``."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    out = {}
    for key, md in metadata.state_dict_metadata.items():
        if key.startswith(prefix) and isinstance(md, TensorStorageMetadata):
            out[key[len(prefix):]] = (tuple(md.size), md.properties.dtype)
    return out


def check_storage(path: str | Path, metadata) -> None:
    """Raises ``ValueError`` naming the first ``.distcp`` file that is missing or shorter than
    the byte ranges the metadata gives it (a truncated write). Reads no tensor data."""
    ends: dict[str, int] = {}
    for info in metadata.storage_data.values():
        ends[info.relative_path] = max(ends.get(info.relative_path, 0), int(info.offset) + int(info.length))
    for rel, end in sorted(ends.items()):
        f = Path(path) / DCP_DIR / rel
        if not f.is_file():
            raise ValueError(f"{f}: missing")
        size = f.stat().st_size
        if size < end:
            raise ValueError(f"{f}: truncated ({size} bytes, the metadata needs {end})")


def load_tensors(path: str | Path, targets: dict[str, Tensor]) -> None:
    """Fills ``targets`` (``{flattened key: tensor of the global shape}``) from checkpoint
    ``path`` in this process alone, in place."""
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "assuming the intent is to load in a single process"
        dcp.load(targets, checkpoint_id=str(Path(path) / DCP_DIR), planner=WeightsOnlyLoadPlanner(), no_dist=True)


def iter_model_tensors(path: str | Path, *, dtype: torch.dtype | None = None) -> Iterator[tuple[str, Tensor]]:
    """Yields ``(fairseq2 name, whole tensor)`` for every model weight of checkpoint ``path``,
    one at a time, in sorted name order, cast to ``dtype`` if given."""
    entries = tensor_entries(read_metadata(path))
    for name in sorted(entries):
        shape, stored = entries[name]
        t = torch.empty(shape, dtype=stored)
        load_tensors(path, {MODEL_PREFIX + name: t})
        yield name, (t if dtype is None else t.to(dtype))
        del t  # the caller holds it if it wants it
