"""Streaming tokenizer training: memory-mapped frame shards (atomic, resumable, bounded sampling) and a run that resumes from them."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import soundfile as sf

from spiritlm.errors import UserError
from spiritlm.tokenizers.features import FeatureConfig, MfccConfig
from spiritlm.tokenizers.kmeans import KMeansConfig, sample_frames
from spiritlm.tokenizers.shards import FrameShards, LazySequence
from spiritlm.tokenizers.style import StyleConfig, StyleTrainConfig
from spiritlm.tokenizers.train import TrainPreset, train_tokenizer
from spiritlm.tokenizers.vqvae import VQVAEConfig, VQVAETrainConfig

SR = 16_000


def _arrays(n=7, dim=3, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((int(rng.integers(0, 9)), dim)).astype(np.float32) for _ in range(n)]


def test_frame_shards_round_trip_resume_and_bounded_sample(tmp_path):
    arrays = _arrays()
    calls = []

    def compute(idx):
        calls.append(list(idx))
        return [None if i == 4 else arrays[i] for i in idx], {"samples": [10 * i for i in idx]}

    shards = FrameShards(tmp_path / "feats", len(arrays), shard_items=3)
    assert shards.num_shards == 3 and shards.build(compute, log=lambda s: None) == 3
    assert calls == [[0, 1, 2], [3, 4, 5], [6]]
    for i, a in enumerate(arrays):
        if i == 4:
            assert not shards.ok(4) and shards[4].shape == (0, 3)
        else:
            assert shards.ok(i) and isinstance(shards[i], np.memmap)
            np.testing.assert_array_equal(shards[i], a)
        assert shards.info(i, "samples") == 10 * i
    assert len(shards[1:3]) == 2 and not list(tmp_path.glob("feats/*tmp*"))

    # a run killed after writing shard 1's frames but not its index: only shard 1 is redone
    os.remove(tmp_path / "feats" / "feats-00001.json")
    again = FrameShards(tmp_path / "feats", len(arrays), shard_items=3)
    lines = []
    assert again.build(compute, log=lines.append) == 1 and calls[-1] == [3, 4, 5]
    assert "2 of 3 shards resumed" in lines[0]

    # the sample is the rows sample_frames draws from the concatenation, read row by row
    keep = [6, 0, 2, 5]
    whole = np.concatenate([arrays[i] for i in keep])
    for max_frames in (None, 5, whole.shape[0]):
        np.testing.assert_array_equal(again.sample(keep, max_frames, seed=3), sample_frames([arrays[i] for i in keep], max_frames, 3))

    # a torn index (frames and lengths disagree) names the files
    with open(tmp_path / "feats" / "feats-00002.json", "w") as f:
        json.dump({"lengths": [99], "ok": [True], "samples": [0]}, f)
    with pytest.raises(ValueError, match="feats-00002.npy.*delete both"):
        FrameShards(tmp_path / "feats", len(arrays), shard_items=3)[6]


def test_lazy_sequence_computes_on_access():
    seen = []
    seq = LazySequence(4, lambda i: seen.append(i) or i * i)
    assert len(seq) == 4 and seen == []
    assert seq[3] == 9 and seq[-1] == 9 and seq[1:3] == [1, 4]
    with pytest.raises(IndexError):
        seq[4]


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "corpus"
    root.mkdir()
    lines = []
    for k in range(6):
        t = np.arange(int((1.0 + 0.1 * k) * SR)) / SR
        f0 = (110 + 40 * k) * (1 + 0.1 * np.sin(2 * np.pi * 1.5 * t))
        wav = 0.3 * sum(np.sin(2 * np.pi * h * np.cumsum(f0) / SR) / h for h in (1, 2, 3))
        sf.write(root / f"u{k}.wav", wav.astype(np.float32), SR)
        lines.append({"id": f"u{k}", "audio": str(root / f"u{k}.wav"), "speaker": f"s{k % 2}", "style": ("calm", "loud")[k % 2]})
    lines.append({"id": "bad", "audio": str(root / "missing.wav"), "speaker": "s0", "style": "calm"})
    (root / "m.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return root / "m.jsonl"


def _preset():
    return TrainPreset(
        features=FeatureConfig(backend="mfcc", mfcc=MfccConfig(cmvn=False)),
        units_kmeans=KMeansConfig(n_clusters=8, n_init=1, max_frames=100),
        expressive=True,
        vqvae=VQVAEConfig(channels=8, latent_dim=4, res_depth=1, codebook_size=8),
        vqvae_train=VQVAETrainConfig(steps=20, batch_size=8, crop_frames=64, log_every=10, checkpoint_every=0),
        style=StyleConfig(n_mels=16, channels=8, layers=1, embed_dim=4),
        style_train=StyleTrainConfig(steps=10, batch_size=4, crop_frames=50, log_every=5),
        style_kmeans=KMeansConfig(n_clusters=2, n_init=1, max_frames=None),
    )


def test_training_streams_through_shards_and_resumes(corpus, tmp_path):
    work = tmp_path / "work"
    first: list[str] = []
    m1 = train_tokenizer(str(corpus), str(tmp_path / "tok1"), _preset(), seed=0, threads=1, log=first.append, work_dir=str(work))
    assert any("skipping bad" in ln for ln in first) and m1["num_train_utts"] == 6
    names = sorted(os.listdir(work))
    assert names[:2] == ["f0", "features"] and names[2] == "plan.json" and names[3].startswith("style-")
    assert any("k-means on 100 frames" in ln for ln in first)  # --max_frames bounds the sample
    assert not any("resumed" in ln for ln in first)

    second: list[str] = []
    m2 = train_tokenizer(str(corpus), str(tmp_path / "tok2"), _preset(), seed=0, threads=1, log=second.append, work_dir=str(work))
    resumed = [ln for ln in second if "shards resumed" in ln]
    assert len(resumed) == 3  # features, F0, style embeddings: nothing recomputed
    for key in ("pnmi", "f0_rmse_cents", "vuv_error", "codebook_perplexity", "style_purity"):
        if key in m1:
            assert m1[key] == m2[key], key
    assert m1.get("f0_rmse_cents") is not None

    # shards of another corpus are refused, with the way out
    other = tmp_path / "other.jsonl"
    other.write_text("".join(ln for ln in corpus.read_text().splitlines(True)[:4]))
    with pytest.raises(UserError, match="shards of another run.*utterances.*delete"):
        train_tokenizer(str(other), str(tmp_path / "tok3"), _preset(), seed=0, threads=1, log=lambda s: None, work_dir=str(work))

    # without a work_dir the shards live in OUT/work and are removed after success
    train_tokenizer(str(corpus), str(tmp_path / "tok4"), _preset(), seed=0, threads=1, log=lambda s: None)
    assert not (tmp_path / "tok4" / "work").exists() and (tmp_path / "tok4" / "metrics.json").exists()
