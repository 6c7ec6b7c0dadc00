"""Training and validation batches from a token directory (:mod:`spiritlm.data.shards`).

Training (:class:`PackedLoader`): an endless, deterministic stream per data-parallel rank.

* **Subset sampling.** Each document drawn comes from a subset chosen with ``subset_weights``
  (default one third each for speech, text and interleaved), by a random generator seeded with
  ``(seed, rank, block of 4096 draws)``.
* **Documents.** Within a subset, epoch ``e`` visits the documents in the order of a permutation
  seeded with ``(seed, subset, e)``, shared by all ranks; rank ``r`` of ``W`` takes the positions
  ``r, r + W, r + 2W, ...`` (the ``n mod W`` left over are skipped in that epoch), so in one epoch
  of a subset no two ranks ever draw the same document, hence never the same sequence.
* **Packing.** A document is ``BOS + tokens + EOS``; documents are concatenated and cut into
  windows of ``seq_len + 1`` tokens that overlap by one token: ``input_ids = window[:-1]``,
  ``labels = window[1:]``, so every token of the stream is a target exactly once. A label is -100
  where the input is EOS (no target across documents). A document longer than a window continues
  in the next one.
* **Resume.** :meth:`PackedLoader.state_dict` holds the draw counter, each subset's (epoch,
  position) and the position inside the current document: O(1) in size; loading it rebuilds at
  most one permutation per subset, and the resumed loader yields exactly the batches the original
  one would have yielded next.

Validation (:class:`ValidationLoader`): one pass over one subset in storage order, documents
``r, r + W, ...`` on rank ``r``, packed the same way, the last window padded with ``pad_id``
(labels -100).

Batches are dicts: ``input_ids`` and ``labels`` LongTensor ``[B, L]``, ``subset_ids`` LongTensor
``[B, L]`` (index into ``subsets`` of the document each input token comes from, -1 on padding),
``subset`` list of ``B`` names (the subset of each row's first token) and ``subsets`` (the names).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from spiritlm.constants import IGNORE_INDEX, SUBSETS
from spiritlm.data.shards import SubsetTokens, TokenDir

_BLOCK = 4096


def _default_weights() -> dict[str, float]:
    return {s: 1.0 / 3.0 for s in SUBSETS}


@dataclass
class LoaderConfig:
    """Data loading settings.

    Args:
        data_dir: token directory written by ``spiritlm data build``.
        seq_len: tokens per row (L).
        batch_size: rows per batch on each rank (B).
        subset_weights: probability of drawing each subset's next document (normalised; subsets
            with weight 0 are never read).
        seed: seed of every random choice.
        rank: this data-parallel rank.
        world_size: number of data-parallel ranks.
        drop_last: validation only: drop the last batch when it has fewer than ``batch_size`` rows.
        add_bos: start each document with BOS.
        add_eos: end each document with EOS.
    """

    data_dir: str
    seq_len: int = 2048
    batch_size: int = 8
    subset_weights: dict[str, float] = field(default_factory=_default_weights)
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    drop_last: bool = False
    add_bos: bool = True
    add_eos: bool = True

    def __post_init__(self) -> None:
        if self.seq_len < 1 or self.batch_size < 1:
            raise ValueError(f"LoaderConfig: seq_len and batch_size must be >= 1, got {self.seq_len}, {self.batch_size}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"LoaderConfig: need 0 <= rank < world_size, got rank {self.rank}, world_size {self.world_size}")
        if any(w < 0 for w in self.subset_weights.values()) or sum(self.subset_weights.values()) <= 0:
            raise ValueError(f"LoaderConfig: subset weights must be >= 0 with a positive sum, got {self.subset_weights}")


class _Packer:
    """Fills windows from documents given as (subset index, doc index) by a draw function."""

    def __init__(self, tokens: TokenDir, subsets: list[SubsetTokens], cfg: LoaderConfig):
        self.bos = tokens.bos_id if cfg.add_bos else None
        self.eos = tokens.eos_id if cfg.add_eos else None
        self.subsets = subsets
        self.cur: tuple[int, int] | None = None  # (subset index, doc index)
        self.cur_doc: np.ndarray | None = None
        self.offset = 0  # position inside BOS + doc + EOS
        self.total = 0

    def set_doc(self, s: int, d: int, offset: int = 0) -> None:
        self.cur = (s, d)
        self.cur_doc = self.subsets[s].doc(d)
        self.total = len(self.cur_doc) + (self.bos is not None) + (self.eos is not None)
        self.offset = offset

    def _copy(self, out: np.ndarray, start: int, n: int) -> None:
        """Copies ``n`` tokens of BOS + doc + EOS from ``start`` to ``out``."""
        doc = self.cur_doc
        has_bos = self.bos is not None
        pos = 0
        i = start
        if has_bos and i == 0 and n > 0:
            out[0] = self.bos
            pos, i = 1, 1
        lo = i - has_bos
        hi = min(len(doc), lo + (n - pos))
        if hi > lo:
            out[pos : pos + hi - lo] = doc[lo:hi]
            pos += hi - lo
        if pos < n:  # the rest is the EOS
            out[pos] = self.eos
            pos += 1
        assert pos == n

    def fill(self, tokens: np.ndarray, subset_ids: np.ndarray, draw) -> None:
        """Fills ``tokens`` (length L + 1) and leaves the last token unconsumed."""
        n = len(tokens)
        filled = 0
        while filled < n:
            if self.cur is None or self.offset >= self.total:
                if not draw():
                    tokens[filled:] = -1
                    subset_ids[filled:] = -1
                    return
            take = min(n - filled, self.total - self.offset)
            self._copy(tokens[filled : filled + take], self.offset, take)
            subset_ids[filled : filled + take] = self.cur[0]
            filled += take
            self.offset += take
        self.offset -= 1  # the window's last token starts the next window


def _to_batch(windows: np.ndarray, subset_ids: np.ndarray, eos: int | None, pad: int, names: list[str]) -> dict[str, Any]:
    inputs = windows[:, :-1].copy()
    labels = windows[:, 1:].copy()
    sub = subset_ids[:, :-1].copy()
    if eos is not None:
        labels[inputs == eos] = IGNORE_INDEX
    labels[labels < 0] = IGNORE_INDEX
    inputs[inputs < 0] = pad
    return {
        "input_ids": torch.from_numpy(inputs),
        "labels": torch.from_numpy(labels),
        "subset_ids": torch.from_numpy(sub.astype(np.int64)),
        "subset": [names[i] if i >= 0 else "" for i in sub[:, 0]],
        "subsets": list(names),
    }


class PackedLoader:
    """Endless training batches for one rank (see the module docstring).

    ``iter(loader)`` continues from the current state; ``next(loader)`` gives one batch.
    """

    def __init__(self, cfg: LoaderConfig, tokens: TokenDir | None = None):
        self.cfg = cfg
        self.tokens = tokens if tokens is not None else TokenDir(cfg.data_dir)
        unknown = set(cfg.subset_weights) - set(self.tokens.subsets)
        if unknown:
            raise ValueError(f"{self.tokens.root}: no subsets {sorted(unknown)} (has {list(self.tokens.subsets)})")
        self.names = [s for s in self.tokens.subsets if cfg.subset_weights.get(s, 0) > 0]
        self.subsets = [self.tokens[s] for s in self.names]
        for sub in self.subsets:
            if sub.num_docs < cfg.world_size:
                raise ValueError(
                    f"{self.tokens.root}: subset {sub.name} has {sub.num_docs} documents, fewer than world_size "
                    f"{cfg.world_size} (give it weight 0 to train without it)"
                )
        w = np.array([cfg.subset_weights[s] for s in self.names], dtype=np.float64)
        self.probs = w / w.sum()
        self.packer = _Packer(self.tokens, self.subsets, cfg)
        self.draws = 0
        self.batches = 0
        self.cursors = [[0, 0] for _ in self.names]  # (epoch, position in the rank's share)
        self._perms: dict[int, tuple[int, np.ndarray]] = {}
        self._block: tuple[int, np.ndarray] | None = None

    # -- random choices -----------------------------------------------------------------

    def _subset_choice(self, k: int) -> int:
        b = k // _BLOCK
        if self._block is None or self._block[0] != b:
            rng = np.random.default_rng([self.cfg.seed, 0x5EED, self.cfg.rank, b])
            self._block = (b, rng.choice(len(self.names), size=_BLOCK, p=self.probs))
        return int(self._block[1][k % _BLOCK])

    def _perm(self, s: int, epoch: int) -> np.ndarray:
        cached = self._perms.get(s)
        if cached is None or cached[0] != epoch:
            idx = SUBSETS.index(self.names[s]) if self.names[s] in SUBSETS else 100 + s
            rng = np.random.default_rng([self.cfg.seed, idx, epoch])
            self._perms[s] = (epoch, rng.permutation(self.subsets[s].num_docs))
        return self._perms[s][1]

    def _draw(self) -> bool:
        s = self._subset_choice(self.draws)
        self.draws += 1
        epoch, pos = self.cursors[s]
        per_rank = self.subsets[s].num_docs // self.cfg.world_size
        if pos >= per_rank:
            epoch, pos = epoch + 1, 0
        d = int(self._perm(s, epoch)[self.cfg.rank + pos * self.cfg.world_size])
        self.cursors[s] = [epoch, pos + 1]
        self.packer.set_doc(s, d)
        return True

    # -- iteration ----------------------------------------------------------------------

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def __next__(self) -> dict[str, Any]:
        B, L = self.cfg.batch_size, self.cfg.seq_len
        windows = np.empty((B, L + 1), dtype=np.int64)
        sub = np.empty((B, L + 1), dtype=np.int64)
        for b in range(B):
            self.packer.fill(windows[b], sub[b], self._draw)
        self.batches += 1
        return _to_batch(windows, sub, self.packer.eos, self.tokens.pad_id, self.names)

    def epochs(self) -> dict[str, int]:
        """Completed epochs per subset on this rank."""
        return {n: c[0] for n, c in zip(self.names, self.cursors)}

    # -- state --------------------------------------------------------------------------

    def _fingerprint(self) -> dict[str, Any]:
        c = self.cfg
        return {
            "seed": c.seed,
            "rank": c.rank,
            "world_size": c.world_size,
            "subsets": self.names,
            "probs": [float(p) for p in self.probs],
            "num_docs": [s.num_docs for s in self.subsets],
            "add_bos": c.add_bos,
            "add_eos": c.add_eos,
        }

    def state_dict(self) -> dict[str, Any]:
        """The position in the stream (small, JSON-serialisable)."""
        p = self.packer
        return {
            "version": 1,
            "fingerprint": self._fingerprint(),
            "draws": self.draws,
            "batches": self.batches,
            "cursors": [list(c) for c in self.cursors],
            "current": None if p.cur is None else [p.cur[0], p.cur[1], p.offset],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a position saved by :meth:`state_dict` of a loader with the same data,
        seed, rank, world size and subset weights (``seq_len`` and ``batch_size`` may differ)."""
        if state.get("version") != 1:
            raise ValueError(f"PackedLoader: unknown state version {state.get('version')!r}")
        mine = self._fingerprint()
        if state["fingerprint"] != mine:
            diff = {k: (state["fingerprint"].get(k), v) for k, v in mine.items() if state["fingerprint"].get(k) != v}
            raise ValueError(f"PackedLoader: state from a different loader (saved vs now: {diff})")
        self.draws = int(state["draws"])
        self.batches = int(state["batches"])
        self.cursors = [list(map(int, c)) for c in state["cursors"]]
        cur = state["current"]
        if cur is None:
            self.packer.cur = None
        else:
            self.packer.set_doc(int(cur[0]), int(cur[1]), int(cur[2]))

    def load_resharded(self, states: list[dict[str, Any]]) -> None:
        """Continues the data stream of a run saved with another world size.

        ``states`` are the :meth:`state_dict` of every rank of the saving run (``W`` ranks), in
        rank order. An exact continuation does not exist (rank ``r`` of ``W'`` draws other
        documents than any old rank), so this continues *without repeating a document within
        an epoch*: for each subset, the newest epoch any old rank was in, and in it the first
        permutation position past every position an old rank used. A few documents of that
        epoch near the cut (those the slower old ranks had not reached) are skipped; documents
        being packed when the run stopped are not resumed. The subset-choice counter goes on
        from the largest old one. Raises ``ValueError`` if the states come from other data,
        seed or weights.
        """
        if not states:
            raise ValueError("PackedLoader: no saved states to reshard")
        mine = {k: v for k, v in self._fingerprint().items() if k not in ("rank", "world_size")}
        old_world = len(states)
        for r, state in enumerate(states):
            if state.get("version") != 1:
                raise ValueError(f"PackedLoader: unknown state version {state.get('version')!r}")
            theirs = {k: v for k, v in state["fingerprint"].items() if k not in ("rank", "world_size")}
            if theirs != mine or state["fingerprint"].get("world_size") != old_world or state["fingerprint"].get("rank") != r:
                diff = {k: (theirs.get(k), v) for k, v in mine.items() if theirs.get(k) != v}
                raise ValueError(f"PackedLoader: rank {r}'s state is from a different loader (saved vs now: {diff})")
        for s in range(len(self.names)):
            cursors = [st["cursors"][s] for st in states]
            epoch = max(int(c[0]) for c in cursors)
            used = max(int(c[1]) for c in cursors if int(c[0]) == epoch)  # positions per old rank
            # old rank r used global positions r + k*W for k < used: all below used * W
            self.cursors[s] = [epoch, -(-used * old_world // self.cfg.world_size)]
        self.draws = max(int(st["draws"]) for st in states)
        self.batches = max(int(st["batches"]) for st in states)
        self.packer.cur = None


class ValidationLoader:
    """One deterministic pass over one subset (see the module docstring); ``len()`` is the
    number of batches on this rank."""

    def __init__(self, cfg: LoaderConfig, subset: str, tokens: TokenDir | None = None):
        self.cfg = cfg
        self.tokens = tokens if tokens is not None else TokenDir(cfg.data_dir)
        self.subset_name = subset
        self.sub = self.tokens[subset]
        self.docs = np.arange(cfg.rank, self.sub.num_docs, cfg.world_size)
        lengths = self.sub.lengths()[self.docs] + cfg.add_bos + cfg.add_eos
        self.num_tokens = int(lengths.sum())
        n_windows = -(-max(self.num_tokens - 1, 0) // cfg.seq_len)
        self.num_windows = n_windows
        full, rest = divmod(n_windows, cfg.batch_size)
        self._len = full + (rest > 0 and not cfg.drop_last)

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[dict[str, Any]]:
        cfg = self.cfg
        packer = _Packer(self.tokens, [self.sub], cfg)
        it = iter(self.docs.tolist())

        def draw() -> bool:
            d = next(it, None)
            if d is None:
                return False
            packer.set_doc(0, d)
            return True

        L = cfg.seq_len
        for b in range(self._len):
            rows = min(cfg.batch_size, self.num_windows - b * cfg.batch_size)
            windows = np.empty((rows, L + 1), dtype=np.int64)
            sub = np.empty((rows, L + 1), dtype=np.int64)
            for r in range(rows):
                packer.fill(windows[r], sub[r], draw)
            yield _to_batch(windows, sub, packer.eos, self.tokens.pad_id, [self.subset_name])
