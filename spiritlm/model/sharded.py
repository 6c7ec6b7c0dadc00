"""Reading sharded training checkpoints (``torch.distributed.checkpoint``) in one process.

A training checkpoint ``checkpoints/step_N/`` keeps its weights and AdamW state in ``dcp/``,
written by every rank in parallel with ``torch.distributed.checkpoint`` (DCP): ``.metadata``
(global shapes, dtypes, which byte range of which file holds which piece) and one
``__R_0.distcp`` file per rank. Keys are the flattened names ``model.<fairseq2 name>`` and
``optim.<fairseq2 name>.{step,exp_avg,exp_avg_sq}``. Any world size, one process included,
can read it: DCP reassembles whatever pieces the reader asks for (resharding).

This module is the single-process reader: :func:`iter_model_tensors` yields one whole tensor
at a time (the streaming export and ``load_any_model`` use it), so reading a 7B checkpoint holds
one tensor plus what the caller keeps. Nothing untrusted is unpickled: DCP's own reader loads
``.metadata`` with a plain ``pickle.load`` (a hostile file would run code), so
:class:`SafeFileSystemReader` reads it with :class:`MetadataUnpickler`, which builds only DCP's
metadata dataclasses, ``torch.Size``, dtypes, layouts, paths and plain containers, and every
load here goes through that reader; the checkpoints hold tensors only, and
:class:`WeightsOnlyLoadPlanner` reads any non-tensor entry with ``weights_only=True``.
"""

from __future__ import annotations

import io
import pickle
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor

from spiritlm.errors import UserError

DCP_DIR = "dcp"
MODEL_PREFIX = "model."
OPTIM_PREFIX = "optim."

__all__ = [
    "DCP_DIR",
    "MODEL_PREFIX",
    "OPTIM_PREFIX",
    "WeightsOnlyLoadPlanner",
    "MetadataError",
    "MetadataUnpickler",
    "SafeFileSystemReader",
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


class MetadataError(UserError, ValueError):
    """A ``dcp/.metadata`` that is not DCP's metadata; the message starts with the file's path."""


# Everything a DCP ``.metadata`` pickle names (torch 2.4-2.9): the dataclasses of
# torch.distributed.checkpoint.metadata (any of them), the storage record of the file-system
# writer, the layout lookup and pathlib's paths (``StorageMeta.checkpoint_id``). Every other
# global, builtins included (``eval``, ``getattr``, ``os.system``, ...), is refused.
_DCP_METADATA_MODULE = "torch.distributed.checkpoint.metadata"
_ALLOWED_GLOBALS = {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch.distributed.checkpoint.storage", "_StorageInfo"),  # older torch
    ("torch.serialization", "_get_layout"),  # looks a torch.layout up by name, nothing else
    ("torch", "Size"),
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib", "PureWindowsPath"),
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "slice"),
}


class MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP metadata and nothing else (see ``_ALLOWED_GLOBALS``): a global outside
    that list raises :class:`pickle.UnpicklingError` before anything is called."""

    def find_class(self, module: str, name: str):
        if module == _DCP_METADATA_MODULE and not name.startswith("__"):
            import torch.distributed.checkpoint.metadata as md

            obj = getattr(md, name, None)
            # classes defined there (not the typing helpers or modules it imports)
            if isinstance(obj, type) and obj.__module__ == _DCP_METADATA_MODULE:
                return obj
        elif module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        elif (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name}: not part of DCP's checkpoint metadata")


def load_metadata_file(path: str | Path):
    """The DCP ``Metadata`` pickled in file ``path``, read with :class:`MetadataUnpickler`.

    Raises:
        MetadataError: naming ``path`` when it holds anything else (a hostile or foreign pickle,
            bytes that are no pickle), or cannot be read.
    """
    from torch.distributed.checkpoint.metadata import Metadata

    try:
        with open(path, "rb") as f:
            metadata = MetadataUnpickler(f).load()
    except FileNotFoundError:
        raise MetadataError(f"{path}: missing") from None
    except Exception as exc:  # noqa: BLE001 - truncated or foreign bytes raise whatever pickle raises
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise MetadataError(f"{path}: not a checkpoint's DCP metadata ({reason})") from None
    if not isinstance(metadata, Metadata):
        raise MetadataError(f"{path}: not a checkpoint's DCP metadata (holds a {type(metadata).__name__})")
    return metadata


def _reader_base():
    from torch.distributed.checkpoint import FileSystemReader

    return FileSystemReader


class SafeFileSystemReader(_reader_base()):  # type: ignore[misc]
    """DCP's file-system reader with :func:`load_metadata_file` in place of its ``pickle.load``
    of ``.metadata`` (the rest of ``FileSystemReader.read_metadata`` kept: the storage meta and
    its load id). Pass it as ``storage_reader=`` to every ``dcp.load``."""

    def read_metadata(self, *args, **kwargs):
        from torch.distributed.checkpoint.metadata import StorageMeta

        get_path = getattr(self, "_get_metadata_path", None)  # torch >= 2.6: per-rank metadata files
        metadata = load_metadata_file(get_path(kwargs.get("rank")) if get_path else Path(self.path) / ".metadata")
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


def is_sharded_checkpoint(path: str | Path) -> bool:
    """True when ``path`` holds ``dcp/.metadata`` (a checkpoint of the training recipe)."""
    return (Path(path) / DCP_DIR / ".metadata").is_file()


def read_metadata(path: str | Path):
    """The DCP ``Metadata`` of checkpoint ``path``, read without running code from the file.

    Raises:
        MetadataError: naming ``path/dcp/.metadata`` (see :func:`load_metadata_file`).
    """
    return SafeFileSystemReader(str(Path(path) / DCP_DIR)).read_metadata()


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
        dcp.load(targets, storage_reader=SafeFileSystemReader(str(Path(path) / DCP_DIR)), planner=WeightsOnlyLoadPlanner(),
                 no_dist=True)


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
