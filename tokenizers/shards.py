"""On-disk shards of per-utterance frame arrays for streaming tokenizer training (memory-mapped .npy).

A shard set is a folder ``DIR/NAME/`` holding, for shard ``k`` of ``ceil(n_items / shard_items)``:

* ``NAME-k.npy``: the frames of its utterances concatenated along axis 0, ``(sum frames_i, D)``
  float32 (``D`` = feature dimension; F0 shards hold ``(T, 2)``: F0 in Hz and voicing);
* ``NAME-k.json``: ``{"lengths": [frames_i, ...], "ok": [bool, ...]}`` — written after the
  ``.npy``, so it marks a complete shard; ``ok`` is False for an utterance whose audio could not
  be read (``lengths`` 0).

Both files are written under temporary names and renamed, so a killed run leaves whole shards
and the next run computes only the missing ones (resume). Reading memory-maps the ``.npy``
files: an utterance's array is a view that costs no memory until touched, and at most
``max_open`` shards are mapped at once (the pages a process touched in a mapped file count in
its resident memory), so training reads a corpus of any size with memory bounded by what it
holds at a time. :meth:`FrameShards.write_sample` copies a bounded random sample of frames to a
file of its own, which k-means then reads chunk by chunk (:func:`read_rows`).
"""

from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np

from spiritlm.atomic import atomic_file, atomic_path

logger = logging.getLogger(__name__)


def trim_heap() -> None:
    """Hands freed heap memory back to the system (glibc's ``malloc_trim``; nothing elsewhere).

    Computing a shard allocates and frees many waveform-sized arrays; glibc keeps the freed
    memory in the process' heap, fragmented, and the resident size then creeps up shard after
    shard (measured: +8 MB per 256-utterance shard of MFCC features) although nothing is kept."""
    global _LIBC
    if _LIBC is None:
        import ctypes

        try:
            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


_LIBC = None


def _atomic_save_npy(path: str, array: np.ndarray) -> None:
    with atomic_path(path, suffix=".npy") as tmp:  # np.save appends .npy to other names
        np.save(tmp, np.ascontiguousarray(array, dtype=np.float32))


def _atomic_save_json(path: str, obj) -> None:
    with atomic_file(path) as f:
        json.dump(obj, f)


class FrameShards(Sequence):
    """Per-utterance ``(frames_i, D)`` float32 arrays stored in shards; ``shards[i]`` is a read-only
    memory-mapped view (``(0, D)`` for an utterance whose audio was unreadable).

    Args:
        directory: the shard folder (``DIR/NAME``); created on :meth:`build`.
        n_items: number of utterances.
        shard_items: utterances per shard.
        max_open: shards kept memory-mapped at once (least recently used first unmapped): the
            pages a process has touched in a mapped file count in its resident memory, so
            training that visits every shard keeps at most this many shards' pages.
    """

    def __init__(self, directory: str | os.PathLike, n_items: int, shard_items: int = 256, max_open: int = 4):
        self.directory = str(directory)
        self.name = os.path.basename(os.path.normpath(self.directory))
        self.n_items = int(n_items)
        self.shard_items = max(1, int(shard_items))
        self.max_open = max(1, int(max_open))
        self._index: dict[int, tuple[np.ndarray, list[bool], dict]] = {}
        self._maps: OrderedDict[int, np.ndarray] = OrderedDict()

    @property
    def num_shards(self) -> int:
        return -(-self.n_items // self.shard_items)

    def _paths(self, k: int) -> tuple[str, str]:
        base = os.path.join(self.directory, f"{self.name}-{k:05d}")
        return base + ".npy", base + ".json"

    def complete(self, k: int) -> bool:
        npy, js = self._paths(k)
        return os.path.exists(npy) and os.path.exists(js)

    def build(self, compute: Callable[[list[int]], tuple[list[np.ndarray | None], dict[str, list]]], desc: str = "") -> int:
        """Computes the missing shards; returns how many were computed (0: all resumed).

        ``compute(indices)`` returns ``(arrays, info)``: one array ``(frames_i, D)`` per index, or
        None for an utterance to skip (unreadable audio), and per-utterance values to keep in the
        shard's JSON (``{key: [value_i, ...]}``, read back with :meth:`info`).
        """
        from tqdm import tqdm

        os.makedirs(self.directory, exist_ok=True)
        todo = [k for k in range(self.num_shards) if not self.complete(k)]
        if len(todo) < self.num_shards:
            logger.info(f"[train] {desc or self.name}: {self.num_shards - len(todo)} of {self.num_shards} shards resumed from {self.directory}")
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
            self._index.pop(k, None)
            del arrays, data
            trim_heap()
        return len(todo)

    def _meta(self, k: int) -> tuple[np.ndarray, list[bool], dict]:
        """Shard ``k``'s index: frame offsets of its utterances, ok flags, the JSON (kept: small)."""
        if k not in self._index:
            npy, js = self._paths(k)
            with open(js) as f:
                meta = json.load(f)
            self._index[k] = (np.concatenate([[0], np.cumsum(meta["lengths"])]).astype(np.int64), list(meta["ok"]), meta)
        return self._index[k]

    def _data(self, k: int) -> np.ndarray:
        """Shard ``k``'s frames, memory-mapped (at most ``max_open`` shards mapped at once)."""
        if k in self._maps:
            self._maps.move_to_end(k)
            return self._maps[k]
        offsets = self._meta(k)[0]
        npy, js = self._paths(k)
        data = np.load(npy, mmap_mode="r")
        if offsets[-1] != data.shape[0]:
            raise ValueError(f"{npy}: {data.shape[0]} frames but {js} lists {offsets[-1]}; delete both to recompute")
        self._maps[k] = data
        while len(self._maps) > self.max_open:
            self._maps.popitem(last=False)  # unmapped once the caller drops its views
        return data

    def info(self, i: int, key: str):
        """The value ``key`` that ``compute`` recorded for utterance ``i``."""
        return self._meta(i // self.shard_items)[2][key][i % self.shard_items]

    def __len__(self) -> int:
        return self.n_items

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.n_items))]
        if not -self.n_items <= i < self.n_items:
            raise IndexError(i)
        i %= self.n_items
        k, j = divmod(i, self.shard_items)
        offsets = self._meta(k)[0]
        return self._data(k)[offsets[j] : offsets[j + 1]]

    def ok(self, i: int) -> bool:
        """False when utterance ``i``'s audio could not be read."""
        return self._meta(i // self.shard_items)[1][i % self.shard_items]

    def length(self, i: int) -> int:
        offsets = self._meta(i // self.shard_items)[0]
        j = i % self.shard_items
        return int(offsets[j + 1] - offsets[j])

    def _sample_rows(self, indices: Sequence[int], max_frames: int | None, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Frame counts of ``indices`` and the sorted sampled positions in their concatenation
        (None: all frames), drawn as :func:`spiritlm.tokenizers.kmeans.sample_frames` draws them."""
        lengths = np.array([self.length(i) for i in indices], dtype=np.int64)
        total = int(lengths.sum())
        if max_frames is None or total <= max_frames:
            return lengths, None
        return lengths, np.sort(np.random.default_rng(seed).choice(total, size=max_frames, replace=False))

    def _sampled(self, indices: Sequence[int], lengths: np.ndarray, rows: np.ndarray | None):
        """Yields the sampled frames of each utterance of ``indices`` in turn (float32 copies)."""
        starts = np.concatenate([[0], np.cumsum(lengths)])
        for pos, i in enumerate(indices):
            a, b = starts[pos], starts[pos + 1]
            if rows is None:
                yield np.array(self[i], dtype=np.float32)
            else:
                lo, hi = np.searchsorted(rows, [a, b])
                if hi > lo:
                    yield np.asarray(self[i][rows[lo:hi] - a], dtype=np.float32)

    def _dim(self, indices: Sequence[int]) -> int:
        return next((self[i].shape[1] for i in indices), 0)

    def sample(self, indices: Sequence[int], max_frames: int | None, seed: int) -> np.ndarray:
        """The frames of ``indices`` (in that order, concatenated), at most ``max_frames`` of them.

        Rows are drawn exactly as :func:`spiritlm.tokenizers.kmeans.sample_frames` draws them from
        the concatenation (same seed, same rows), but only the drawn rows are read: memory is
        ``max_frames x D`` whatever the corpus size.
        """
        lengths, rows = self._sample_rows(indices, max_frames, seed)
        out = list(self._sampled(indices, lengths, rows))
        return np.concatenate(out, 0) if out else np.zeros((0, self._dim(indices)), np.float32)

    def write_sample(self, path: str | os.PathLike, indices: Sequence[int], max_frames: int | None, seed: int) -> tuple[int, int]:
        """Writes the rows :meth:`sample` returns to the ``.npy`` file ``path`` (float32 ``(N, D)``),
        one utterance at a time: memory holds one utterance's frames, never the sample.

        The file is written under a temporary name and renamed; an existing ``path`` is taken as
        complete and kept (resume: name it after what it was drawn from). Returns ``(N, D)``.
        """
        path = str(path)
        if os.path.exists(path):
            shape = np.load(path, mmap_mode="r").shape
            return int(shape[0]), int(shape[1])
        lengths, rows = self._sample_rows(indices, max_frames, seed)
        n, dim = (int(lengths.sum()) if rows is None else len(rows)), self._dim(indices)
        written = 0
        with atomic_file(path, "wb") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False, "shape": (n, dim)})
            for x in self._sampled(indices, lengths, rows):
                f.write(np.ascontiguousarray(x, dtype=np.float32).tobytes())
                written += x.shape[0]
            if written != n:  # inside the block: the half-written file is removed, not renamed
                raise ValueError(f"{path}: wrote {written} rows, expected {n}")
        return n, dim


def read_rows(path: str | os.PathLike, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` (sorted positions) of the ``(N, D)`` ``.npy`` file ``path`` as a float32 array.

    The file is mapped for this read only and unmapped after, so repeated reads of a large file
    (k-means chunks) do not accumulate its pages in the process' resident memory."""
    data = np.load(str(path), mmap_mode="r")
    out = np.array(data[np.asarray(rows, dtype=np.int64)], dtype=np.float32)
    del data
    return out


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
