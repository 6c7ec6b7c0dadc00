"""Unit tokenizer pieces: MFCC frames, batching equivalence, k-means format and assignment."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from spiritlm.tokenizers.features import MfccBackend, MfccConfig, conv_chain_frames
from spiritlm.tokenizers.kmeans import KMeansConfig, KMeansQuantizer, load_kmeans, save_kmeans, train_kmeans



def _speechlike(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * t)
    x = 0.3 * np.sin(2 * np.pi * np.cumsum(f0) / 16000) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)) + 0.02 * rng.standard_normal(n)
    return x.astype(np.float32)


def test_hubert_25hz_frame_counts():
    assert conv_chain_frames(146_160) == 228  # Spirit LM's count for the real utterance
    assert conv_chain_frames(400) == 0 and conv_chain_frames(720) == 1  # 720-sample receptive field
    assert conv_chain_frames(16_000) == 24  # 1 s -> 24 frames at 25 Hz (HuBERT drops a partial frame)
    assert conv_chain_frames(100) == 0


@pytest.mark.parametrize("cfg", [MfccConfig(), MfccConfig(cmvn=False), MfccConfig(pool="stack")])
def test_mfcc_batched_equals_one_at_a_time(cfg):
    backend = MfccBackend(cfg)
    wavs = [_speechlike(n, i) for i, n in enumerate((16_000, 7_777, 31_999, 1_300))]
    batched = backend.extract(wavs)
    for wav, feats in zip(wavs, batched):
        single = backend.extract([wav])[0]
        assert feats.shape == single.shape == (conv_chain_frames(len(wav)), backend.dim)
        np.testing.assert_allclose(feats, single, atol=1e-5)
    # order in the batch does not matter either
    rev = backend.extract(wavs[::-1])[::-1]
    for a, b in zip(batched, rev):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_mfcc_tracks_content():
    backend = MfccBackend(MfccConfig(cmvn=False))
    a, b = _speechlike(16000, 0), np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.3
    fa, fb = backend.extract([a, b])
    assert fa.shape == (24, 39)
    assert np.abs(fa.mean(0) - fb.mean(0)).max() > 1.0  # tone vs noise differ


def test_kmeans_meta_format_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    blobs = np.concatenate([rng.normal(c, 0.1, size=(300, 4)) for c in (-3, 0, 3)]).astype(np.float32)
    centers = train_kmeans([blobs[:500], blobs[500:]], KMeansConfig(n_clusters=3, n_init=3, batch_size=256, seed=0))
    assert centers.shape == (3, 4)
    assert sorted(np.round(centers[:, 0]).tolist()) == [-3, 0, 3]
    path = tmp_path / "km.pt"
    save_kmeans(path, centers)
    # the file is Meta's layout: a pickled dict holding a numpy array and an int
    raw = torch.load(path, weights_only=False)
    assert set(raw) == {"cluster_centers", "n_clusters"}
    assert isinstance(raw["cluster_centers"], np.ndarray) and raw["n_clusters"] == 3
    np.testing.assert_array_equal(load_kmeans(path), centers)
    # same seed -> same centres
    again = train_kmeans([blobs[:500], blobs[500:]], KMeansConfig(n_clusters=3, n_init=3, batch_size=256, seed=0))
    np.testing.assert_array_equal(again, centers)


def test_kmeans_loader_refuses_arbitrary_pickles(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    p = tmp_path / "evil.pt"
    with open(p, "wb") as f:
        pickle.dump({"cluster_centers": Evil(), "n_clusters": 1}, f)
    with pytest.raises(ValueError, match="evil.pt"):
        load_kmeans(p)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_kmeans(tmp_path / "missing.pt")


def test_quantizer_matches_sklearn_predict():
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(1)
    x = rng.standard_normal((500, 8)).astype(np.float32)
    km = KMeans(n_clusters=7, n_init=1, random_state=0).fit(x)
    q = KMeansQuantizer(km.cluster_centers_)
    np.testing.assert_array_equal(q(torch.from_numpy(x)).numpy(), km.predict(x))
    assert q(torch.from_numpy(x).reshape(5, 100, 8)).shape == (5, 100)
    with pytest.raises(ValueError, match="dim 3"):
        q(torch.zeros(2, 3))
