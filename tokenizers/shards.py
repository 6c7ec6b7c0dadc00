"""On-disk shards of per-utterance frame arrays for streaming tokenizer training (memory-mapped .npy).

A shard set is a folder ``DIR/NAME/`` holding, for shard ``k`` of ``ceil(n_items / shard_items)``:

* ``NAME-k.npy``: the frames of its utterances concatenated along axis 0, ``(sum frames_i, D)``
  float32 (``D`` = feature dimension; F0 shards hold ``(T, 2)``: F0 in Hz and voicing);
* ``NAME-k.json``: ``{"lengths": [frames_i, ...], "ok": [bool, ...]}`` — written after the
  ``.npy``, so it marks a complete shard; ``ok`` is False for an utterance whose audio could not
  be read (``lengths`` 0).

Both files are written under temporary names and renamed, so a killed run leaves whole shards
and the next run computes only the missing ones (resume). Reading memory-maps the ``.npy``
files: an utterance's array is a view that costs no memory until touched, so training reads a
corpus of any size with memory bounded by what it samples.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence

import numpy as np


def _atomic_save_npy(path: str, array: np.ndarray) -> None:
    tmp = f"{path}.tmp-{os.getpid()}.npy"
    np.save(tmp, np.ascontiguousarray(array, dtype=np.float32))
    os.replace(tmp, path)


def _atomic_save_json(path: str, obj) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


class FrameShards(Sequence):
    """Per-utterance ``(frames_i, D)`` float32 arrays stored in shards; ``shards[i]`` is a read-only
    memory-mapped view (``(0, D)`` for an utterance whose audio was unreadable).

    Args:
        directory: the shard folder (``DIR/NAME``); created on :meth:`build`.
        n_items: number of utterances.
        shard_items: utterances per shard.
    """

    def __init__(self, directory: str | os.PathLike, n_items: int, shard_items: int = 256):
        self.directory = str(directory)
        self.name = os.path.basename(os.path.normpath(self.directory))
        self.n_items = int(n_items)
        self.shard_items = max(1, int(shard_items))
        self._maps: dict[int, tuple[np.ndarray, np.ndarray, list[bool], dict]] = {}

    @property
    def num_shards(self) -> int:
        return -(-self.n_items // self.shard_items)

    def _paths(self, k: int) -> tuple[str, str]:
        base = os.path.join(self.directory, f"{self.name}-{k:05d}")
        return base + ".npy", base + ".json"

    def complete(self, k: int) -> bool:
        npy, js = self._paths(k)
        return os.path.exists(npy) and os.path.exists(js)

    def build(self, compute: Callable[[list[int]], tuple[list[np.ndarray | None], dict[str, list]]], log=print, desc: str = "") -> int:
        """Computes the missing shards; returns how many were computed (0: all resumed).

        ``compute(indices)`` returns ``(arrays, info)``: one array ``(frames_i, D)`` per index, or
        None for an utterance to skip (unreadable audio), and per-utterance values to keep in the
        shard's JSON (``{key: [value_i, ...]}``, read back with :meth:`info`).
        """
        from tqdm import tqdm

        os.makedirs(self.directory, exist_ok=True)
        todo = [k for k in range(self.num_shards) if not self.complete(k)]
        if len(todo) < self.num_shards:
            log(f"[train] {desc or self.name}: {self.num_shards - len(todo)} of {self.num_shards} shards resumed from {self.directory}")
        for k in tqdm(todo, desc=desc or self.name, unit="shard", disable=not todo):
            idx = list(range(k * self.shard_items, min((k + 1) * self.shard_items, self.n_items)))
            arrays, info = compute(idx)
            dim = next((a.shape[1] for a in arrays if a is not None), 0)
            ok = [a is not None for a in arrays]
            arrays = [a if a is not None else np.zeros((0, dim), np.float32) for a in arrays]
            data = np.concatenate(arrays, 0) if arrays else np.zeros((0, dim), np.float32)
            npy, js = self._paths(k)
            _atomic_save_npy(npy, data)
            _atomic_save_json(js, {**info, "lengths": [int(a.shape[0]) for a in arrays], "ok": ok})
            self._maps.pop(k, None)
        return len(todo)

    def _shard(self, k: int):
        if k not in self._maps:
            npy, js = self._paths(k)
            with open(js) as f:
                meta = json.load(f)
            data = np.load(npy, mmap_mode="r")
            offsets = np.concatenate([[0], np.cumsum(meta["lengths"])]).astype(np.int64)
            if offsets[-1] != data.shape[0]:
                raise ValueError(f"{npy}: {data.shape[0]} frames but {js} lists {offsets[-1]}; delete both to recompute")
            self._maps[k] = (data, offsets, list(meta["ok"]), meta)
        return self._maps[k]

    def info(self, i: int, key: str):
        """The value ``key`` that ``compute`` recorded for utterance ``i``."""
        return self._shard(i // self.shard_items)[3][key][i % self.shard_items]

    def __len__(self) -> int:
        return self.n_items

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.n_items))]
        if not -self.n_items <= i < self.n_items:
            raise IndexError(i)
        i %= self.n_items
        data, offsets = self._shard(i // self.shard_items)[:2]
        j = i % self.shard_items
        return data[offsets[j] : offsets[j + 1]]

    def ok(self, i: int) -> bool:
        """False when utterance ``i``'s audio could not be read."""
        return self._shard(i // self.shard_items)[2][i % self.shard_items]

    def length(self, i: int) -> int:
        offsets = self._shard(i // self.shard_items)[1]
        j = i % self.shard_items
        return int(offsets[j + 1] - offsets[j])

    def sample(self, indices: Sequence[int], max_frames: int | None, seed: int) -> np.ndarray:
        """The frames of ``indices`` (in that order, concatenated), at most ``max_frames`` of them.

        Rows are drawn exactly as :func:`spiritlm.tokenizers.kmeans.sample_frames` draws them from
        the concatenation (same seed, same rows), but only the drawn rows are read: memory is
        ``max_frames x D`` whatever the corpus size.
        """
        lengths = np.array([self.length(i) for i in indices], dtype=np.int64)
        total = int(lengths.sum())
        dim = next((self[i].shape[1] for i in indices if lengths.size), 0)
        if max_frames is None or total <= max_frames:
            rows = None
        else:
            rows = np.sort(np.random.default_rng(seed).choice(total, size=max_frames, replace=False))
        starts = np.concatenate([[0], np.cumsum(lengths)])
        out = []
        for pos, i in enumerate(indices):
            a, b = starts[pos], starts[pos + 1]
            if rows is None:
                out.append(np.asarray(self[i], dtype=np.float32))
            else:
                lo, hi = np.searchsorted(rows, [a, b])
                if hi > lo:
                    out.append(np.asarray(self[i][rows[lo:hi] - a], dtype=np.float32))
        return np.concatenate(out, 0) if out else np.zeros((0, dim), np.float32)


class LazySequence(Sequence):
    """``seq[i] = fn(i)`` computed on access (for training examples derived from shards or files)."""

    def __init__(self, n: int, fn: Callable[[int], object]):
        self.n, self.fn = int(n), fn

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self.fn(j) for j in range(*i.indices(self.n))]
        if not -self.n <= i < self.n:
            raise IndexError(i)
        return self.fn(i % self.n)
