"""Style tokenizer: window pooling, batching equivalence, save/load, the w2v2 backend."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spiritlm.tokenizers.style import (
    StyleCNN,
    StyleConfig,
    StyleTokenizer,
    W2V2StyleEncoder,
    num_style_frames,
    pool_windows,
)


def test_spirit_lm_style_framing():
    frames = num_style_frames(146_160)
    assert frames == 456  # wav2vec 2.0's 50 Hz frame count
    emb = torch.randn(1, frames, 4)
    pooled, n = pool_windows(emb, torch.tensor([frames]), 50)
    assert int(n[0]) == 10 == pooled.shape[1]  # Spirit LM: 10 style tokens, last window partial
    torch.testing.assert_close(pooled[0, 9], emb[0, 450:456].mean(0))
    torch.testing.assert_close(pooled[0, 0], emb[0, :50].mean(0))


def test_pool_windows_ignores_padding():
    emb = torch.randn(2, 120, 3)
    pooled, n = pool_windows(emb, torch.tensor([120, 60]), 50)
    assert n.tolist() == [3, 2]
    torch.testing.assert_close(pooled[1, 1], emb[1, 50:60].mean(0))


def _wavs():
    rng = np.random.default_rng(0)
    return [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (16_000, 40_123, 9_000)]


def test_cnn_batched_equals_one_at_a_time_and_round_trips(tmp_path):
    torch.manual_seed(0)
    cfg = StyleConfig(n_mels=16, channels=8, layers=2, embed_dim=4, labels=["a", "b"])
    enc = StyleCNN(cfg).eval()
    wavs = _wavs()
    centers = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    tok = StyleTokenizer(enc, cfg, centers)
    batched = tok.pooled(wavs)
    for w, p in zip(wavs, batched):
        single = tok.pooled([w])[0]
        assert p.shape == single.shape == (int(np.ceil(num_style_frames(len(w)) / 50)), 4)
        np.testing.assert_allclose(p, single, atol=1e-5)
    codes = tok.encode(wavs)
    tok.save(tmp_path / "s")
    tok2 = StyleTokenizer.load(tmp_path / "s")
    for a, b in zip(codes, tok2.encode(wavs)):
        np.testing.assert_array_equal(a, b)
    assert tok2.cfg == cfg


def test_w2v2_classifier_backend(tmp_path):
    from transformers import Wav2Vec2Config, Wav2Vec2ForSequenceClassification

    cfg = Wav2Vec2Config(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
        conv_dim=(8, 8, 8, 8, 8, 8, 8), num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2,
        classifier_proj_size=6, num_labels=7,
    )
    torch.manual_seed(0)
    Wav2Vec2ForSequenceClassification(cfg).save_pretrained(tmp_path / "w2v2")
    enc = W2V2StyleEncoder.from_pretrained(tmp_path / "w2v2")
    tok = StyleTokenizer(enc, StyleConfig(backend="w2v2", checkpoint=str(tmp_path / "w2v2"), mode="classifier"))
    wav = (0.1 * np.random.default_rng(0).standard_normal(146_160)).astype(np.float32)
    codes = tok.encode([wav])[0]
    assert codes.shape == (10,) and codes.max() < 7
    tok.save(tmp_path / "style")
    np.testing.assert_array_equal(StyleTokenizer.load(tmp_path / "style").encode([wav])[0], codes)
    with pytest.raises(ValueError, match="classifier"):
        StyleTokenizer(StyleCNN(StyleConfig(labels=["a"])), StyleConfig(mode="classifier"))
