"""F0 extraction (on real speech), normalisation, the pitch VQ-VAE and its quantizers."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from spiritlm.audio import load_audio
from spiritlm.tokenizers.f0 import (
    F0Config,
    SpeakerStats,
    compute_speaker_stats,
    extract_f0,
    interpolate_f0,
    normalise,
    num_f0_frames,
)
from spiritlm.tokenizers.pitch import PitchConfig, PitchTokenizer
from spiritlm.tokenizers.vqvae import (
    EMAQuantizer,
    PitchVQVAE,
    VQVAEConfig,
    VQVAETrainConfig,
    codebook_stats,
    load_vqvae,
    num_codes,
    save_vqvae,
    train_vqvae,
)

from fixtures import REAL_FLAC

REAL = str(REAL_FLAC)



def test_spirit_lm_pitch_framing():
    assert num_f0_frames(146_160) == 1828
    assert num_codes(1828) == 114  # Spirit LM's 114 pitch tokens for the real utterance
    assert num_codes(1827) == 114


@pytest.mark.skipif(not os.path.exists(REAL), reason="real utterance not available")
def test_dio_on_real_speech_is_sensible():
    wav = load_audio(REAL)
    assert wav.shape == (146_160,)
    f0, vuv = extract_f0(wav, F0Config(backend="pyworld-dio"))
    assert f0.shape == vuv.shape == (1828,)
    voiced = f0[vuv > 0]
    assert 0.44 < vuv.mean() < 0.50  # README: about 47 % voiced
    assert 138 < np.median(voiced) < 148  # README: median about 143 Hz
    p10, p90 = np.percentile(voiced, [10, 90])
    assert 100 < p10 < 120 and 240 < p90 < 290
    assert np.all(f0[vuv == 0] == 0)


def test_interpolation_and_normalisation():
    f0 = np.array([0, 0, 100, 0, 0, 200, 0], np.float32)
    np.testing.assert_allclose(interpolate_f0(f0), [100, 100, 100, 133.333, 166.667, 200, 200], rtol=1e-4)
    assert np.all(interpolate_f0(np.zeros(4)) == 0)
    x = normalise(f0, (f0 > 0).astype(np.float32), np.log(100.0), 0.5)
    assert x.shape == (2, 7)
    np.testing.assert_allclose(x[0, [2, 5]], [0.0, np.log(2) / 0.5], atol=1e-6)
    np.testing.assert_array_equal(x[1], [0, 0, 1, 0, 0, 1, 0])


def test_speaker_stats_round_trip(tmp_path):
    a = np.array([100, 0, 100, 100], np.float32)
    b = np.array([200, 200, 0], np.float32)
    st = compute_speaker_stats([("a", a), ("b", b)])
    assert st.speakers["a"]["mean"] == pytest.approx(np.log(100))
    assert st.speakers["b"]["frames"] == 2
    assert st.mean_for("b") == pytest.approx(np.log(200))
    assert st.mean_for("unknown", np.array([0, 300.0])) == pytest.approx(np.log(300))  # utterance mean
    st.save(tmp_path / "s.json")
    st2 = SpeakerStats.load(tmp_path / "s.json")
    assert st2 == st
    with pytest.raises(FileNotFoundError, match="nope.json"):
        SpeakerStats.load(tmp_path / "nope.json")


@pytest.mark.parametrize("quantizer", ["ema", "simvq"])
def test_vqvae_shapes(quantizer):
    m = PitchVQVAE(VQVAEConfig(channels=16, latent_dim=8, codebook_size=64, quantizer=quantizer))
    x = torch.randn(3, 2, 1828)
    rec, codes, vq, _ = m(x)
    assert codes.shape == (3, 114) and rec.shape == (3, 2, 114 * 16)
    assert codes.min() >= 0 and codes.max() < 64
    m.eval()
    assert m.encode(x).shape == (3, 114)
    assert m.decode(m.encode(x)).shape == (3, 2, 1824)


def test_ema_dead_codes_are_restarted():
    torch.manual_seed(0)
    q = EMAQuantizer(8, 2, decay=0.5, dead_threshold=0.5).train()
    z = torch.randn(64, 2)
    q(z)
    # move every code far away: none is used, all decay below the threshold and get restarted
    q.codebook.fill_(100.0)
    q.ema_sum.copy_(q.codebook)
    restarted = 0
    for _ in range(4):
        _, _, _, stats = q(z)
        restarted += stats["restarted"]
    assert restarted >= 6  # the 7 codes no frame picked (one takes them all) die and restart
    assert int((q.codebook.abs().max(1).values < 10).sum()) >= 6  # restarted from encoder outputs


def _synthetic_contours(n=40, T=400, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        t = np.arange(T) / 200
        lf = 0.3 * np.sin(2 * np.pi * rng.uniform(0.5, 3) * t + rng.uniform(0, 6)) + rng.normal(0, 0.05)
        vuv = (np.sin(2 * np.pi * rng.uniform(1, 4) * t + rng.uniform(0, 6)) > -0.3).astype(np.float32)
        out.append(np.stack([lf, vuv]).astype(np.float32))
    return out


@pytest.mark.parametrize("quantizer", ["ema", "simvq"])
def test_vqvae_trains_and_round_trips(tmp_path, quantizer):
    ex = _synthetic_contours()
    cfg = VQVAEConfig(channels=24, latent_dim=8, codebook_size=16, quantizer=quantizer)
    model, log = train_vqvae(ex, cfg, VQVAETrainConfig(steps=90, batch_size=16, crop_frames=128, lr=3e-3, log_every=30, checkpoint_every=60, seed=0),
                             out_dir=str(tmp_path))
    assert [r["step"] for r in log] == [30, 60, 90]
    assert log[-1]["f0"] < log[0]["f0"]  # it learns
    assert 0 < log[-1]["codebook_usage"] <= 1 and log[-1]["codebook_perplexity"] >= 1
    assert os.path.exists(tmp_path / "checkpoints" / "step_60" / "model.safetensors")
    assert (tmp_path / "train_log.jsonl").read_text().count("\n") == 3
    save_vqvae(model, tmp_path / "final")
    loaded = load_vqvae(tmp_path / "final")
    x = torch.from_numpy(ex[0])[None]
    assert torch.equal(model.encode(x), loaded.encode(x))
    # reproducible: same seed, same model
    model2, _ = train_vqvae(ex, cfg, VQVAETrainConfig(steps=90, batch_size=16, crop_frames=128, lr=3e-3, log_every=30, checkpoint_every=0, seed=0))
    assert torch.equal(model.encode(x), model2.encode(x))


def test_codebook_stats():
    s = codebook_stats(np.array([0, 1, 2, 3] * 10), 8)
    assert s["codebook_usage"] == 0.5 and s["codebook_perplexity"] == pytest.approx(4.0)


def test_pitch_tokenizer_save_load(tmp_path):
    model = PitchVQVAE(VQVAEConfig(channels=16, latent_dim=8)).eval()
    stats = SpeakerStats({"s": {"mean": float(np.log(120)), "std": 0.2, "frames": 10}}, float(np.log(120)), 0.25)
    tok = PitchTokenizer(model, stats, PitchConfig())
    wav = (0.3 * np.sin(2 * np.pi * 140 * np.arange(24_000) / 16000)).astype(np.float32)
    codes = tok.encode([wav], ["s"])[0]
    assert codes.shape == (tok.num_tokens(24_000),) == (num_codes(24_000 // 80 + 1),)
    tok.save(tmp_path / "p")
    tok2 = PitchTokenizer.load(tmp_path / "p")
    np.testing.assert_array_equal(tok2.encode([wav], ["s"])[0], codes)
    assert tok2.stats == stats


@pytest.mark.parametrize("backend", ["pyworld-dio", "pyworld-harvest", pytest.param("torchcrepe", marks=pytest.mark.slow)])
def test_f0_backends_on_a_tone(backend):
    n = 16_000
    t = np.arange(n) / 16000
    wav = np.zeros(n, np.float32)
    tone = 0.3 * sum(np.sin(2 * np.pi * 150 * k * t) / k for k in range(1, 6))  # harmonic, like a voice
    wav[4000:12000] = tone[4000:12000]  # 0.25-0.75 s voiced
    f0, vuv = extract_f0(wav, F0Config(backend=backend))
    assert f0.shape == vuv.shape == (num_f0_frames(n),) == (201,)
    mid = slice(70, 130)  # 0.35-0.65 s
    assert vuv[mid].mean() > 0.9
    assert np.median(f0[mid]) == pytest.approx(150, rel=0.03)
    assert vuv[:30].mean() < 0.2 and vuv[-30:].mean() < 0.2  # silence is unvoiced
