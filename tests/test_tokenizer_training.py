"""Tokenizer training: steps that follow the corpus, a plan and time left in the log, pinned numerics
(issue 12, items 15 and 17)."""

from __future__ import annotations

import json
import logging

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


def test_training_logs_its_plan_and_time_left_and_records_numerics(tones, tmp_path, caplog):
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
    caplog.set_level(logging.INFO, logger="spiritlm")
    metrics = train_tokenizer(str(tones), str(tmp_path / "tok"), preset, seed=0, threads=1)
    lines = [r.getMessage() for r in caplog.records]
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


_TRAIN_IN_A_FRESH_PROCESS = """
import json, sys
from spiritlm.tokenizers.features import FeatureConfig, MfccConfig
from spiritlm.tokenizers.kmeans import KMeansConfig
from spiritlm.tokenizers.style import StyleConfig, StyleTrainConfig
from spiritlm.tokenizers.train import TrainPreset, train_tokenizer
from spiritlm.tokenizers.vqvae import VQVAEConfig, VQVAETrainConfig
preset = TrainPreset(
    features=FeatureConfig(backend="mfcc", mfcc=MfccConfig(cmvn=False)),
    units_kmeans=KMeansConfig(n_clusters=8, n_init=2),
    expressive=True,
    vqvae=VQVAEConfig(channels=8, latent_dim=4, res_depth=1, codebook_size=8),
    vqvae_train=VQVAETrainConfig(steps=40, batch_size=8, crop_frames=64, log_every=10, checkpoint_every=0),
    style=StyleConfig(n_mels=16, channels=8, layers=1, embed_dim=4),
    style_train=StyleTrainConfig(steps=20, batch_size=4, crop_frames=50, log_every=10),
    style_kmeans=KMeansConfig(n_clusters=2, n_init=1, max_frames=None),
)
m = train_tokenizer(sys.argv[1], sys.argv[2], preset, seed=0, threads=int(sys.argv[3]))
print(json.dumps(m["numerics"]["blas_openmp_threads"]))
"""


def _train_in_subprocess(manifest, out, threads: int, ambient: int) -> tuple[dict, dict]:
    import os
    import subprocess
    import sys

    env = {**os.environ, **{k: str(ambient) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}}
    run = subprocess.run([sys.executable, "-c", _TRAIN_IN_A_FRESH_PROCESS, str(manifest), str(out), str(threads)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    pools = json.loads(run.stdout.strip().splitlines()[-1])
    return metrics, pools


def _comparable(m: dict) -> dict:
    """A tokenizer's metrics less wall-clock fields and the recorded environment."""
    m = {k: v for k, v in m.items() if k not in ("timings", "numerics")}
    m["pitch_train_last_log"] = {k: v for k, v in m["pitch_train_last_log"].items() if k != "elapsed_s"}
    return m


@pytest.mark.slow  # two fresh processes that import torch and train (~30 s idle)
def test_same_threads_flag_gives_identical_models_whatever_the_shell_set(tones, tmp_path):
    """``--threads 1`` pins every pool: a shell with OMP/OpenBLAS/MKL at 2 threads changes nothing.

    (Issue 18, item 17: a run recorded one OpenBLAS pool at 1 thread and another at 2, because
    threadpoolctl limits only the libraries loaded when the limit starts.)
    """
    one, pools_one = _train_in_subprocess(tones, tmp_path / "a", threads=1, ambient=1)
    two, pools_two = _train_in_subprocess(tones, tmp_path / "b", threads=1, ambient=2)
    assert all(n == 1 for _, n in pools_one + pools_two), (pools_one, pools_two)
    assert _comparable(one) == _comparable(two)
    for f in ("units/kmeans.pt", "pitch/model.safetensors", "style/encoder.safetensors", "style/kmeans.pt"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f


def test_train_refuses_a_trained_tokenizer_unless_overwrite(tones, tmp_path, capsys):
    """Issue 18 item 3 (the rule of every trainer): `tokenizer train --out DIR` on a folder holding
    a tokenizer is refused in one line, before any training, and the folder is left as it was."""
    from spiritlm.cli import main

    out = tmp_path / "tok"
    (out / "units").mkdir(parents=True)
    (out / "units" / "unit_config.json").write_text("{}")
    with pytest.raises(SystemExit):
        main(["tokenizer", "train", "--manifest", str(tones), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(out) in err[0] and "--overwrite true" in err[0], err
    assert sorted(p.name for p in out.rglob("*")) == ["unit_config.json", "units"]


def test_shards_of_other_settings_are_refused_naming_the_flag_or_restarted_with_overwrite(tmp_path):
    """An unfinished run's shards resume only under the same plan; another plan names the flags
    that differ (no shard is touched), and --overwrite true starts the shards over."""
    from spiritlm.errors import UserError
    from spiritlm.tokenizers.train import _check_work_dir

    work = tmp_path / "work"
    plan = {"manifest": "/m.jsonl", "utterances": "abc", "shard_items": 256, "features": {"backend": "mfcc"}, "f0": {"backend": "yin"}}
    _check_work_dir(str(work), plan)
    (work / "features").mkdir()
    _check_work_dir(str(work), dict(plan))  # the same plan: resumed
    assert (work / "features").is_dir()
    other = {**plan, "features": {"backend": "hubert"}}
    with pytest.raises(UserError, match=r"plan.json: shards of an unfinished run with other settings \(--preset / --hubert / --layer"):
        _check_work_dir(str(work), other)
    assert (work / "features").is_dir() and json.loads((work / "plan.json").read_text()) == plan
    _check_work_dir(str(work), other, overwrite=True)
    assert not (work / "features").exists() and json.loads((work / "plan.json").read_text()) == other


def test_a_killed_tokenizer_train_resumes_by_itself(tones, tmp_path, capsys, monkeypatch):
    """Issue 18 item 3 (every trainer resumes): `tokenizer train` killed after its feature pass is
    continued by the same command without a flag: OUT is not there to be refused, the features are
    read back from OUT.work's complete shards (not extracted again), and the result equals an
    uninterrupted run's."""
    from spiritlm.cli import main
    from spiritlm.tokenizers import train as T

    small = TrainPreset(features=FeatureConfig(backend="mfcc", mfcc=MfccConfig(cmvn=False)),
                        units_kmeans=KMeansConfig(n_clusters=8, n_init=1), expressive=False)
    monkeypatch.setattr(T, "make_preset", lambda *a, **k: small)  # the named presets need 100 clusters' worth of audio
    extracted = []
    real_backend, real_fit = T.load_backend, T._fit_kmeans

    def counting_backend(*a, **k):
        backend = real_backend(*a, **k)
        extract = backend.extract
        backend.extract = lambda *x, **y: (extracted.append(1), extract(*x, **y))[1]
        return backend

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(T, "load_backend", counting_backend)
    monkeypatch.setattr(T, "_fit_kmeans", killed)
    out = tmp_path / "tok"
    argv = ["tokenizer", "train", "--manifest", str(tones), "--out", str(out), "--threads", "1"]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 130 and not out.exists() and (tmp_path / "tok.work" / "features").is_dir()
    n = len(extracted)
    assert n > 0
    monkeypatch.setattr(T, "_fit_kmeans", real_fit)
    extracted.clear()
    main(argv)  # the same command: resumed, not refused
    assert not extracted and (out / "units" / "unit_config.json").is_file() and not (tmp_path / "tok.work").exists()
    main([*argv[:5], str(tmp_path / "straight"), "--threads", "1"])
    assert len(extracted) == n  # a run from nothing extracts them
    files = sorted(f for f in (tmp_path / "straight" / "units").iterdir() if f.is_file())
    assert any(f.suffix in (".npy", ".pt", ".safetensors") for f in files), files
    for f in files:  # the same k-means centres
        assert (out / "units" / f.name).read_bytes() == f.read_bytes(), f.name
    capsys.readouterr()
    with pytest.raises(SystemExit):  # finished: refused
        main(argv)
    assert "--overwrite true" in capsys.readouterr().err


def test_presets_are_the_packaged_yaml_recipes(tmp_path):
    """Issue 19: the presets live in recipes/configs/tokenizer-*.yaml (the values the code held
    before, field for field); a packaged name or a YAML file names a recipe too."""
    tiny = TrainPreset(
        features=FeatureConfig(backend="mfcc", mfcc=MfccConfig(cmvn=False)),
        units_kmeans=KMeansConfig(n_clusters=100, max_frames=200_000),
        expressive=True,
        vqvae=VQVAEConfig(channels=48, latent_dim=32, res_depth=2),
        vqvae_train=VQVAETrainConfig(steps=800, batch_size=32, crop_frames=128, lr=2e-3, log_every=25, checkpoint_every=400),
        style=StyleConfig(backend="cnn", n_mels=64, channels=96, layers=3, embed_dim=32),
        style_train=StyleTrainConfig(steps=300, batch_size=16, crop_frames=150, log_every=25),
        style_kmeans=KMeansConfig(n_clusters=16, n_init=20, max_frames=None),
        scale_steps=True,
    )
    assert make_preset("tiny") == make_preset("tokenizer-tiny") == tiny
    hub = tmp_path / "hubert"
    hub.mkdir()
    for name in ("base", "expressive"):
        got = make_preset(name, hubert=str(hub), layer=9, style_encoder="w2v2-dir")
        assert got == TrainPreset(
            features=FeatureConfig(backend="hubert", checkpoint=str(hub), layer=9),
            units_kmeans=KMeansConfig(n_clusters=500),
            expressive=name == "expressive",
            vqvae=VQVAEConfig(channels=128, latent_dim=64, res_depth=3),
            vqvae_train=VQVAETrainConfig(steps=20_000, batch_size=64, crop_frames=512, lr=2e-4, log_every=500, checkpoint_every=5000),
            style=StyleConfig(backend="w2v2", checkpoint="w2v2-dir", mode="kmeans"),
            style_train=StyleTrainConfig(steps=3000, batch_size=32, crop_frames=250),
            style_kmeans=KMeansConfig(n_clusters=100),
            scale_steps=True,
        ), name
    assert make_preset("base", hubert=str(tmp_path / "x.pt")).features.backend == "fairseq-hubert"
    with pytest.raises(ValueError, match="needs --hubert"):
        make_preset("expressive")
    own = tmp_path / "mine.yaml"
    own.write_text("features: {backend: mfcc}\nunits_kmeans: {n_clusters: 7}\nexpressive: false\n")
    assert make_preset(str(own)).units_kmeans.n_clusters == 7
    own.write_text("units_kmeans: {clusters: 7}\n")
    with pytest.raises(ValueError, match=r"mine.yaml: unknown key\(s\) units_kmeans.clusters"):
        make_preset(str(own))
    with pytest.raises(ValueError, match=r"huge: no such recipe file \(--preset\).*tokenizer-tiny"):
        make_preset("huge")
