"""Sharded, memory-mappable token files.

Layout of a data directory::

    DIR/index.json                      format, dtype, vocabulary ids, subsets -> shards
    DIR/summary.json                    build statistics (written by ``spiritlm data build``)
    DIR/tokenizer.model                 the text tokenizer (when the build trained one)
    DIR/<subset>/<subset>_00000.bin     token ids of the shard's documents, concatenated (raw, dtype)
    DIR/<subset>/<subset>_00000.idx.npy int64 offsets [num_docs + 1] into the .bin (in tokens)
    DIR/<subset>/<subset>_00000.ids.txt the source utterance id of each document, one a line

Documents are stored without BOS/EOS (the loader adds them). ``dtype`` is ``uint16`` when the
vocabulary fits in it and ``uint32`` otherwise.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

INDEX_FORMAT = "spiritlm-tokens/1"
INDEX_FILE = "index.json"
SUMMARY_FILE = "summary.json"


def token_dtype(vocab_size: int) -> np.dtype:
    """``uint16`` for vocabularies up to 65536 ids, else ``uint32``."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


class ShardWriter:
    """Appends documents of one subset to shards of at most ``shard_tokens`` tokens each."""

    def __init__(self, out_dir: str | os.PathLike, subset: str, dtype: np.dtype, shard_tokens: int = 1 << 26):
        self.root = Path(out_dir)
        self.subset = subset
        self.dtype = np.dtype(dtype)
        self.shard_tokens = int(shard_tokens)
        (self.root / subset).mkdir(parents=True, exist_ok=True)
        self.shards: list[dict] = []
        self._bin = None
        self._offsets: list[int] = []
        self._ids: list[str] = []

    def _open(self) -> None:
        k = len(self.shards)
        stem = f"{self.subset}/{self.subset}_{k:05d}"
        self.shards.append({"bin": stem + ".bin", "idx": stem + ".idx.npy", "ids": stem + ".ids.txt"})
        self._bin = open(self.root / (stem + ".bin"), "wb")
        self._offsets = [0]
        self._ids = []

    def add(self, tokens: np.ndarray, doc_id: str) -> None:
        """Appends one document (token ids, no BOS/EOS)."""
        if self._bin is None or (self._offsets[-1] > 0 and self._offsets[-1] + len(tokens) > self.shard_tokens):
            self._close_shard()
            self._open()
        self._bin.write(np.asarray(tokens, dtype=self.dtype).tobytes())
        self._offsets.append(self._offsets[-1] + len(tokens))
        self._ids.append(doc_id)

    def _close_shard(self) -> None:
        if self._bin is None:
            return
        self._bin.close()
        shard = self.shards[-1]
        np.save(self.root / shard["idx"], np.asarray(self._offsets, dtype=np.int64))
        (self.root / shard["ids"]).write_text("".join(f"{i}\n" for i in self._ids))
        shard["num_docs"] = len(self._ids)
        shard["num_tokens"] = int(self._offsets[-1])
        self._bin = None

    def close(self) -> dict:
        """Finishes the last shard; returns the subset's index entry."""
        self._close_shard()
        return {
            "num_docs": sum(s["num_docs"] for s in self.shards),
            "num_tokens": sum(s["num_tokens"] for s in self.shards),
            "shards": self.shards,
        }


def write_index(
    out_dir: str | os.PathLike,
    subsets: dict[str, dict],
    *,
    vocab_size: int,
    bos_id: int,
    eos_id: int,
    pad_id: int,
    tokenizer: str | None = None,
) -> Path:
    """Writes ``DIR/index.json`` from the entries returned by :meth:`ShardWriter.close`."""
    index = {
        "format": INDEX_FORMAT,
        "dtype": token_dtype(vocab_size).name,
        "vocab_size": int(vocab_size),
        "bos_id": int(bos_id),
        "eos_id": int(eos_id),
        "pad_id": int(pad_id),
        "tokenizer": tokenizer,
        "subsets": subsets,
    }
    path = Path(out_dir) / INDEX_FILE
    path.write_text(json.dumps(index, indent=1) + "\n")
    return path


def write_token_dir(
    out_dir: str | os.PathLike,
    docs: dict[str, Sequence[Sequence[int]]],
    *,
    vocab_size: int,
    bos_id: int = 1,
    eos_id: int = 2,
    pad_id: int = 2,
    shard_tokens: int = 1 << 26,
    tokenizer: str | None = None,
) -> Path:
    """Writes documents given in memory (``{subset: [token ids, ...]}``) as a data directory."""
    entries = {}
    for subset, subset_docs in docs.items():
        w = ShardWriter(out_dir, subset, token_dtype(vocab_size), shard_tokens)
        for i, d in enumerate(subset_docs):
            w.add(np.asarray(d), f"{subset}-{i}")
        entries[subset] = w.close()
    return write_index(out_dir, entries, vocab_size=vocab_size, bos_id=bos_id, eos_id=eos_id, pad_id=pad_id, tokenizer=tokenizer)


@dataclass
class SubsetTokens:
    """Read-only view of one subset: documents across its shards, memory-mapped."""

    name: str
    bins: list[np.ndarray]  # memmaps, one per shard
    offsets: list[np.ndarray]  # int64 [docs + 1] per shard
    first_doc: np.ndarray  # int64 [shards + 1]: global index of each shard's first document
    ids_files: list[Path]

    @property
    def num_docs(self) -> int:
        return int(self.first_doc[-1])

    @property
    def num_tokens(self) -> int:
        return int(sum(int(o[-1]) for o in self.offsets))

    def locate(self, i: int) -> tuple[int, int]:
        """``(shard, local index)`` of global document ``i``."""
        if not 0 <= i < self.num_docs:
            raise IndexError(f"subset {self.name}: document {i} out of range ({self.num_docs} documents)")
        s = int(np.searchsorted(self.first_doc, i, side="right")) - 1
        return s, i - int(self.first_doc[s])

    def doc(self, i: int) -> np.ndarray:
        """Token ids of document ``i`` (a memmap slice, no BOS/EOS)."""
        s, j = self.locate(i)
        o = self.offsets[s]
        return self.bins[s][o[j] : o[j + 1]]

    def lengths(self) -> np.ndarray:
        """int64 ``[num_docs]``: tokens per document."""
        if not self.offsets:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([np.diff(o) for o in self.offsets])

    def doc_id(self, i: int) -> str:
        """Source utterance id of document ``i``."""
        s, j = self.locate(i)
        return self.ids_files[s].read_text().splitlines()[j]


class TokenDir:
    """A data directory written by ``spiritlm data build`` (see the module docstring)."""

    def __init__(self, data_dir: str | os.PathLike):
        self.root = Path(data_dir)
        path = self.root / INDEX_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no token index (build the directory with `spiritlm data build`)")
        try:
            self.index = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
        if self.index.get("format") != INDEX_FORMAT:
            raise ValueError(f"{path}: format {self.index.get('format')!r}, expected {INDEX_FORMAT!r}")
        self.dtype = np.dtype(self.index["dtype"])
        self.vocab_size = int(self.index["vocab_size"])
        self.bos_id = int(self.index["bos_id"])
        self.eos_id = int(self.index["eos_id"])
        self.pad_id = int(self.index["pad_id"])
        self.subsets: dict[str, SubsetTokens] = {}
        for name, entry in self.index["subsets"].items():
            bins, offsets, ids = [], [], []
            for shard in entry["shards"]:
                off = np.load(self.root / shard["idx"])
                n = int(off[-1])
                bin_path = self.root / shard["bin"]
                size = bin_path.stat().st_size
                if size != n * self.dtype.itemsize:
                    raise ValueError(f"{bin_path}: {size} bytes, expected {n} tokens of {self.dtype.name}")
                bins.append(np.memmap(bin_path, dtype=self.dtype, mode="r", shape=(n,)) if n else np.zeros(0, self.dtype))
                offsets.append(off)
                ids.append(self.root / shard["ids"])
            first = np.concatenate([[0], np.cumsum([len(o) - 1 for o in offsets])]).astype(np.int64)
            self.subsets[name] = SubsetTokens(name, bins, offsets, first, ids)

    @property
    def tokenizer_path(self) -> Path | None:
        """The text tokenizer recorded in the index (relative paths are relative to the directory)."""
        tok = self.index.get("tokenizer")
        if not tok:
            return None
        p = Path(tok)
        return p if p.is_absolute() else self.root / p

    def __getitem__(self, subset: str) -> SubsetTokens:
        try:
            return self.subsets[subset]
        except KeyError:
            raise KeyError(f"{self.root}: no subset {subset!r} (has {list(self.subsets)})") from None


def iter_docs(subset: SubsetTokens, indices: Iterable[int] | None = None):
    """Yields ``(index, tokens)`` over a subset's documents."""
    for i in range(subset.num_docs) if indices is None else indices:
        yield i, subset.doc(i)
