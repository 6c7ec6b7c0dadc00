"""Tokenizer training: steps that follow the corpus, a plan and time left in the log, pinned numerics
(issue 12, items 15 and 17)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from spiritlm.tokenizers.features import FeatureConfig, MfccConfig
from spiritlm.tokenizers.kmeans import KMeansConfig
from spiritlm.tokenizers.style import StyleConfig, StyleTrainConfig
from spiritlm.tokenizers.train import TrainPreset, make_preset, plan_steps, train_tokenizer
from spiritlm.tokenizers.vqvae import VQVAEConfig, VQVAETrainConfig

SR = 16_000


def test_pitch_and_style_steps_follow_the_corpus():
    tiny = make_preset("tiny")
    small = plan_steps(tiny, train_seconds=120.0)  # ~40 synthetic utterances
    # pitch: the floor that still learns voicing (600 of 800); style: 50 of 300
    assert (small.vqvae_train.steps, small.style_train.steps) == (600, 50)
    assert (tiny.vqvae_train.steps, tiny.style_train.steps) == (800, 300)
    big = plan_steps(tiny, train_seconds=4500.0)  # the full demo's corpus: the preset's steps, as before
    assert (big.vqvae_train.steps, big.style_train.steps) == (800, 300)
    mid = plan_steps(tiny, 600.0)  # more data, more steps
    assert mid.vqvae_train.steps == 600 and 50 < mid.style_train.steps < 300
    custom = TrainPreset(features=tiny.features, units_kmeans=tiny.units_kmeans, expressive=True)
    assert plan_steps(custom, 1.0) == custom  # an explicit preset keeps its steps


@pytest.fixture(scope="module")
def tones(tmp_path_factory):
    """Six 1.2 s harmonic tones (two speakers, two styles), as a manifest with id/audio/speaker/style only."""
    import soundfile as sf

    root = tmp_path_factory.mktemp("tones")
    lines = []
    for k in range(6):
        t = np.arange(int(1.2 * SR)) / SR
        f0 = (110 + 40 * k) * (1 + 0.1 * np.sin(2 * np.pi * 1.5 * t))
        wav = 0.3 * sum(np.sin(2 * np.pi * h * np.cumsum(f0) / SR) / h for h in (1, 2, 3))
        sf.write(root / f"u{k}.wav", wav.astype(np.float32), SR)
        lines.append({"id": f"u{k}", "audio": f"u{k}.wav", "speaker": f"s{k % 2}", "style": ("calm", "loud")[k % 2]})
    (root / "m.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return root / "m.jsonl"


def test_training_logs_its_plan_and_time_left_and_records_numerics(tones, tmp_path):
    preset = TrainPreset(
        features=FeatureConfig(backend="mfcc", mfcc=MfccConfig(cmvn=False)),
        units_kmeans=KMeansConfig(n_clusters=8, n_init=1),
        expressive=True,
        vqvae=VQVAEConfig(channels=8, latent_dim=4, res_depth=1, codebook_size=8),
        vqvae_train=VQVAETrainConfig(steps=100, batch_size=16, crop_frames=64, log_every=10, checkpoint_every=0),
        style=StyleConfig(n_mels=16, channels=8, layers=1, embed_dim=4),
        style_train=StyleTrainConfig(steps=400, batch_size=4, crop_frames=50, log_every=10),
        style_kmeans=KMeansConfig(n_clusters=2, n_init=1, max_frames=None),
        scale_steps=True,
    )
    lines: list[str] = []
    metrics = train_tokenizer(str(tones), str(tmp_path / "tok"), preset, seed=0, threads=1, log=lines.append)
    # 7.2 s of audio: 20 passes are a handful of steps, raised to the floors (capped by the preset's
    # 100 pitch steps; 50 style steps, not the preset's 400)
    assert metrics["config"]["vqvae_train"]["steps"] == 100 and metrics["config"]["style_train"]["steps"] == 50
    plan = [ln for ln in lines if "plan for" in ln]
    assert len(plan) == 1 and "pitch VQ-VAE 100 steps" in plan[0] and "CNN 50 steps" in plan[0]
    assert any("left of this stage" in ln and "[pitch vq-vae] step" in ln for ln in lines)
    assert any("left of this stage" in ln and "[style cnn] step" in ln for ln in lines)
    num = metrics["numerics"]
    assert num["torch_threads"] == 1 and num["cpu_capability"] in ("DEFAULT", "AVX2", "AVX512", "ZVECTOR", "VSX", "SVE256")
    blas = [n for api, n in num["blas_openmp_threads"] if api in ("openblas", "mkl", "blis")]
    assert blas and all(n == 1 for n in blas)
    assert json.loads((tmp_path / "tok" / "metrics.json").read_text())["numerics"] == json.loads(json.dumps(num))
