"""Training/validation loaders: packing, labels, subset weights, exact resume, rank disjointness."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from spiritlm.data import IGNORE_INDEX, LoaderConfig, PackedLoader, TokenDir, ValidationLoader, write_token_dir

BOS, EOS, PAD = 1, 2, 3
SUBSET_BASE = {"speech": 1000, "text": 2000, "interleaved": 3000}


def doc_tokens(subset: str, i: int, rng: np.random.Generator) -> np.ndarray:
    """Document i of a subset: [marker-ish id encoding (subset, i)] + filler; length 1..40."""
    n = int(rng.integers(1, 40))
    return np.concatenate([[SUBSET_BASE[subset] + i], rng.integers(10, 900, size=n)])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    rng = np.random.default_rng(0)
    docs = {s: [doc_tokens(s, i, rng) for i in range(n)] for s, n in (("speech", 101), ("text", 77), ("interleaved", 50))}
    out = tmp_path_factory.mktemp("tokens")
    write_token_dir(out, docs, vocab_size=4000, bos_id=BOS, eos_id=EOS, pad_id=PAD, shard_tokens=500)
    return out, docs


def docs_in(ids: torch.Tensor) -> list[tuple[str, int]]:
    """(subset, doc index) of every document start (the id after a BOS) in a row."""
    out = []
    ids = ids.tolist()
    for a, b in zip(ids, ids[1:]):
        if a == BOS:
            for s, base in SUBSET_BASE.items():
                if base <= b < base + 1000:
                    out.append((s, b - base))
    return out


def test_shards_round_trip(data_dir):
    out, docs = data_dir
    tokens = TokenDir(out)
    assert tokens.dtype == np.uint16
    for s, ds in docs.items():
        sub = tokens[s]
        assert len(sub.bins) > 1  # several shards
        assert sub.num_docs == len(ds)
        for i, d in enumerate(ds):
            assert np.array_equal(sub.doc(i), d)
        assert sub.doc_id(3) == f"{s}-3"
        assert np.array_equal(sub.lengths(), [len(d) for d in ds])


def test_batches_shapes_labels_and_packing(data_dir):
    out, docs = data_dir
    cfg = LoaderConfig(str(out), seq_len=64, batch_size=4, seed=1)
    loader = PackedLoader(cfg)
    stream = []
    for _ in range(30):
        b = next(loader)
        x, y = b["input_ids"], b["labels"]
        assert x.shape == y.shape == (4, 64) and x.dtype == y.dtype == torch.long
        assert b["subset_ids"].shape == (4, 64) and len(b["subset"]) == 4
        # next-token targets, none across a document end
        assert torch.equal(y[:, :-1][x[:, 1:] != -1], torch.where(x[:, :-1] == EOS, IGNORE_INDEX, x[:, 1:])[x[:, 1:] != -1])
        assert (y[x == EOS] == IGNORE_INDEX).all()
        assert ((y == IGNORE_INDEX) == (x == EOS)).all()
        for r in range(4):
            stream.extend(x[r].tolist())
            names = [b["subsets"][i] for i in b["subset_ids"][r].tolist()]
            for tok, name in zip(x[r].tolist(), names):
                if tok >= 1000:
                    assert SUBSET_BASE[name] <= tok < SUBSET_BASE[name] + 1000
    # the concatenated inputs are whole documents BOS + doc + EOS, back to back
    arr = np.array(stream)
    starts = np.flatnonzero(arr == BOS)
    for a, b in zip(starts[:-1], starts[1:]):
        body = arr[a + 1 : b - 1]
        assert arr[b - 1] == EOS
        s = next(s for s, base in SUBSET_BASE.items() if base <= body[0] < base + 1000)
        assert np.array_equal(body, docs[s][body[0] - SUBSET_BASE[s]])


def test_subset_weights(data_dir):
    out, _ = data_dir
    loader = PackedLoader(LoaderConfig(str(out), seq_len=256, batch_size=8, subset_weights={"speech": 3, "text": 1}))
    counts = Counter()
    for _ in range(20):
        b = next(loader)
        for r in range(8):
            counts.update(s for s, _ in docs_in(b["input_ids"][r]))
    assert counts["interleaved"] == 0
    ratio = counts["speech"] / counts["text"]
    assert 2.2 < ratio < 4.0, counts
    with pytest.raises(ValueError, match="no subsets"):
        PackedLoader(LoaderConfig(str(out), subset_weights={"speech": 1, "nope": 1}))


def test_one_epoch_visits_each_document_once(data_dir):
    out, docs = data_dir
    loader = PackedLoader(LoaderConfig(str(out), seq_len=32, batch_size=2, subset_weights={"text": 1}, seed=4))
    stream = []
    while loader.epochs()["text"] == 0 or loader.cursors[0][1] == 0:
        stream.append(next(loader)["input_ids"].reshape(-1))
    seen = docs_in(torch.cat(stream))  # rows continue each other: concatenate them
    first_epoch = [d for s, d in seen][: len(docs["text"])]
    assert sorted(first_epoch) == list(range(len(docs["text"])))


def test_resume_is_exact(data_dir):
    out, _ = data_dir
    cfg = LoaderConfig(str(out), seq_len=48, batch_size=3, seed=7)
    a = PackedLoader(cfg)
    for _ in range(11):
        next(a)
    state = json.loads(json.dumps(a.state_dict()))  # JSON-serialisable
    expected = [next(a) for _ in range(25)]  # crosses epochs of the small subsets
    b = PackedLoader(cfg)
    b.load_state_dict(state)
    for e in expected:
        got = next(b)
        for k in ("input_ids", "labels", "subset_ids"):
            assert torch.equal(got[k], e[k])
        assert got["subset"] == e["subset"]
    assert b.state_dict() == a.state_dict()
    # state of another configuration is refused
    other = PackedLoader(LoaderConfig(str(out), seq_len=48, batch_size=3, seed=8))
    with pytest.raises(ValueError, match="different loader"):
        other.load_state_dict(state)


def test_fresh_loaders_agree(data_dir):
    out, _ = data_dir
    cfg = LoaderConfig(str(out), seq_len=40, batch_size=2, seed=3)
    a, b = PackedLoader(cfg), PackedLoader(cfg)
    for _ in range(5):
        assert torch.equal(next(a)["input_ids"], next(b)["input_ids"])
    c = PackedLoader(LoaderConfig(str(out), seq_len=40, batch_size=2, seed=4))
    assert not torch.equal(next(c)["input_ids"], next(PackedLoader(cfg))["input_ids"])


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_see_distinct_data(data_dir, world_size):
    out, docs = data_dir
    seen = []
    rows = []
    for rank in range(world_size):
        loader = PackedLoader(LoaderConfig(str(out), seq_len=32, batch_size=2, seed=5, rank=rank, world_size=world_size))
        mine = set()
        my_rows = set()
        # stay inside the first epoch of every subset
        while True:
            state = loader.state_dict()
            b = next(loader)
            if any(e > 0 for e in loader.epochs().values()):
                loader.load_state_dict(state)
                break
            for r in range(2):
                mine.update(docs_in(b["input_ids"][r]))
                my_rows.add(tuple(b["input_ids"][r].tolist()))
        assert len(mine) > 10
        seen.append(mine)
        rows.append(my_rows)
    for i in range(world_size):
        for j in range(i + 1, world_size):
            assert not (seen[i] & seen[j])
            assert not (rows[i] & rows[j])


@pytest.mark.parametrize("old,new", [(2, 1), (2, 3), (3, 2)])
def test_resharded_resume_repeats_no_document_of_the_epoch(data_dir, old, new):
    """Issue 10: a run saved with `old` ranks continues with `new` ranks: within the epoch it was
    in, the new ranks draw only documents no old rank drew, and different ones from each other."""
    out, docs = data_dir
    cfg = dict(seq_len=32, batch_size=2, subset_weights={"text": 1}, seed=5)
    loaders = [PackedLoader(LoaderConfig(str(out), rank=r, world_size=old, **cfg)) for r in range(old)]
    before = set()
    for i, loader in enumerate(loaders):
        for _ in range(3 + i):  # ranks at different positions, as after a real stop
            for row in next(loader)["input_ids"]:
                before.update(docs_in(row))
    states = [json.loads(json.dumps(lo.state_dict())) for lo in loaders]
    after = []
    for r in range(new):
        lo = PackedLoader(LoaderConfig(str(out), rank=r, world_size=new, **cfg))
        lo.load_resharded(states)
        mine = set()
        while lo.epochs()["text"] == 0:
            state = lo.state_dict()
            batch = next(lo)
            if lo.epochs()["text"] > 0:
                lo.load_state_dict(state)
                break
            for row in batch["input_ids"]:
                mine.update(docs_in(row))
        assert mine and not (mine & before), r
        after.append(mine)
    for i in range(new):
        for j in range(i + 1, new):
            assert not (after[i] & after[j])
    # a state of other data or another seed is refused
    other = PackedLoader(LoaderConfig(str(out), rank=0, world_size=new, **{**cfg, "seed": 6}))
    with pytest.raises(ValueError, match="different loader"):
        other.load_resharded(states)


def test_validation_loader(data_dir):
    out, docs = data_dir
    all_docs = []
    for rank in range(2):
        cfg = LoaderConfig(str(out), seq_len=50, batch_size=4, rank=rank, world_size=2)
        val = ValidationLoader(cfg, "interleaved")
        batches = list(val)
        again = list(ValidationLoader(cfg, "interleaved"))
        assert len(batches) == len(val) > 0
        assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(batches, again))
        targets = 0
        for b in batches:
            assert set(b["subset"]) <= {"interleaved", ""}
            targets += int((b["labels"] != IGNORE_INDEX).sum())
        all_docs += docs_in(torch.cat([b["input_ids"].reshape(-1) for b in batches]))
        # every token is a target once, except each document's BOS... and EOS (no target after EOS)
        mine = range(rank, len(docs["interleaved"]), 2)
        assert targets == sum(len(docs["interleaved"][i]) + 1 for i in mine)
    assert sorted(d for _, d in all_docs) == list(range(len(docs["interleaved"])))
    last = batches[-1]
    assert (last["input_ids"][last["subset_ids"] == -1] == PAD).all()
    dropped = ValidationLoader(LoaderConfig(str(out), seq_len=50, batch_size=4, drop_last=True), "interleaved")
    assert all(b["input_ids"].shape[0] == 4 for b in dropped)


def test_config_errors(data_dir):
    out, _ = data_dir
    with pytest.raises(ValueError, match="rank"):
        LoaderConfig(str(out), rank=2, world_size=2)
    with pytest.raises(ValueError, match="weights"):
        LoaderConfig(str(out), subset_weights={"speech": 0})
    with pytest.raises(FileNotFoundError, match="index.json"):
        PackedLoader(LoaderConfig(str(out / "missing")))
    with pytest.raises(ValueError, match="fewer than world_size"):
        PackedLoader(LoaderConfig(str(out), world_size=60, rank=0))
