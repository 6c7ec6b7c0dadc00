"""Meta's released speech tokenizer, file for file: the linear unit quantizer (MLP + CTC blank),
FCPE / pYAAPT F0, ``speaker_stats`` files, and ``assemble --meta_checkpoints`` on a fake release
folder. Small checkpoints are built here in each layout and the loaders are checked against
reference computations written in this file (numpy forward passes, Meta's blank-filling loop
as written in their code, torchfcpe's own ``infer``)."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
import torch
import yaml

from spiritlm.tokenizers.f0 import (
    F0Config,
    extract_f0_batch,
    load_meta_speaker_stats,
    meta_speaker_stats,
    save_meta_speaker_stats,
)
from spiritlm.tokenizers.kmeans import KMeansQuantizer, LinearQuantizer, QuantizerError, load_quantizer, save_kmeans
from spiritlm.tokenizers.speech_tokenizer import SpeechTokenizer

SR = 16_000
V, D, U = 6, 12, 15  # vocab_size, dim, upstream_dim: widths 12 -> 10 -> 8 -> 7 (m = 15 - 7 = 8)


# ---------------------------------------------------------------------------------------------
# references
# ---------------------------------------------------------------------------------------------


def mlp_reference(sd: dict, x: np.ndarray) -> np.ndarray:
    """Logits of Meta's quantizer MLP in numpy (LeakyReLU slope 0.01)."""
    h = x.astype(np.float64)
    for i, k in enumerate(("0", "2", "4")):
        h = h @ sd[f"{k}.weight"].double().numpy().T + sd[f"{k}.bias"].double().numpy()
        if i < 2:
            h = np.where(h > 0, h, 0.01 * h)
    return h


def meta_fill_reference(code: np.ndarray, blank: int) -> np.ndarray:
    """Meta's post-processing as written in their LinearQuantizerModel (one utterance)."""
    code = code.copy()
    n = 0
    while (code == blank).any():
        n += 1
        code[code == blank] = np.roll(code, 1)[code == blank]
        if n == 10000:
            break
    return code


def linear_checkpoint(seed: int = 0, vocab: int = V, dim: int = D, upstream: int = U, blank_bias: float | None = None) -> dict:
    """A checkpoint in the layout of Meta's L11_quantizer_500.pt. The blank row has zero weights
    and bias ``blank_bias``: it wins where the other logits are small (features near 0)."""
    m = upstream - (vocab + 1)
    w = [dim, dim - m // 4, dim - m // 2, vocab + 1]
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for i, k in enumerate(("0", "2", "4")):
        sd[f"{k}.weight"] = torch.randn(w[i + 1], w[i], generator=g) * 0.6
        sd[f"{k}.bias"] = torch.randn(w[i + 1], generator=g) * 0.05
    if blank_bias is not None:
        sd["4.weight"][vocab] = 0.0
        sd["4.bias"][vocab] = blank_bias
    return {"model_cfg": {"vocab_size": vocab, "dim": dim, "upstream_dim": upstream}, "model_weight": sd}


def features_with_blanks(ckpt: dict, blank_frames: list[int], T: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``(T, D)`` features whose arg-max is the blank exactly on ``blank_frames`` (checked)."""
    sd, vocab = ckpt["model_weight"], ckpt["model_cfg"]["vocab_size"]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, ckpt["model_cfg"]["dim"])).astype(np.float32) * 6.0
    x[blank_frames] = 0.0
    for _ in range(100):  # redraw the few random frames that land on the blank
        raw = mlp_reference(sd, x).argmax(-1)
        redo = [t for t in np.flatnonzero(raw == vocab) if t not in blank_frames]
        if not redo:
            break
        x[redo] = rng.standard_normal((len(redo), x.shape[1])).astype(np.float32) * 6.0
    assert sorted(np.flatnonzero(raw == vocab).tolist()) == sorted(blank_frames), "test setup: blank pattern not as designed"
    return x, raw


@pytest.fixture(scope="module")
def blank_ckpt():
    # the blank logit is a constant 1.0 above the largest non-blank logit at x = 0
    ckpt = linear_checkpoint(seed=0, blank_bias=0.0)
    at_zero = mlp_reference(ckpt["model_weight"], np.zeros((1, D), np.float32))[0, :V]
    ckpt["model_weight"]["4.bias"][V] = float(at_zero.max()) + 1.0
    return ckpt


# ---------------------------------------------------------------------------------------------
# linear quantizer
# ---------------------------------------------------------------------------------------------


def test_layer_sizes_follow_metas_formula(tmp_path):
    torch.save(linear_checkpoint(vocab=500, dim=768, upstream=1024), tmp_path / "L11_quantizer_500.pt")
    q = load_quantizer(tmp_path / "L11_quantizer_500.pt")
    assert isinstance(q, LinearQuantizer)
    m = 1024 - 501
    assert [tuple(p.shape) for p in q.encoder.state_dict().values()] == [
        (768 - m // 4, 768), (768 - m // 4,), (768 - m // 2, 768 - m // 4), (768 - m // 2,), (501, 768 - m // 2), (501,)]
    assert q.n_clusters == 500 and q.blank == 500 and q.dim == 768


@pytest.mark.parametrize("blanks", [[0], [0, 1, 2], [3, 4, 5, 9], [0, 7, 8, 9, 10, 19]])
def test_blanks_take_the_unit_before_them(tmp_path, blank_ckpt, blanks):
    torch.save(blank_ckpt, tmp_path / "q.pt")
    q = load_quantizer(tmp_path / "q.pt")
    x, raw = features_with_blanks(blank_ckpt, blanks, T=20)
    want = meta_fill_reference(raw, V)
    got = q(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(got, want)
    assert not (got == V).any()
    if 0 in blanks:  # a blank first frame takes the last non-blank frame's unit (cyclic)
        last = max(i for i in range(20) if i not in blanks)
        assert got[0] == raw[last]


def test_batched_with_padding_fills_within_each_utterance(blank_ckpt):
    q = LinearQuantizer.from_checkpoint(blank_ckpt)
    x1, raw1 = features_with_blanks(blank_ckpt, [0, 1, 6], T=12, seed=2)
    x2, raw2 = features_with_blanks(blank_ckpt, [0, 4, 5], T=8, seed=3)
    batch = torch.zeros(2, 12, D)
    batch[0], batch[1, :8] = torch.from_numpy(x1), torch.from_numpy(x2)
    got = q(batch, torch.tensor([12, 8])).numpy()
    np.testing.assert_array_equal(got[0], meta_fill_reference(raw1, V))
    # the second utterance wraps around to its own last frame, not to the padding or to utterance 1
    np.testing.assert_array_equal(got[1, :8], meta_fill_reference(raw2, V))


def test_all_blank_utterance_keeps_the_blank_id(blank_ckpt):
    q = LinearQuantizer.from_checkpoint(blank_ckpt)
    got = q(torch.zeros(5, D)).numpy()
    np.testing.assert_array_equal(got, meta_fill_reference(np.full(5, V), V))
    assert (got == V).all()


def test_both_layouts_detected_and_bad_files_named(tmp_path):
    centers = np.random.default_rng(0).standard_normal((7, D)).astype(np.float32)
    save_kmeans(tmp_path / "km.pt", centers)
    km = load_quantizer(tmp_path / "km.pt")
    assert isinstance(km, KMeansQuantizer)
    x = torch.randn(9, D)
    np.testing.assert_array_equal(km(x).numpy(), ((x.numpy()[:, None] - centers[None]) ** 2).sum(-1).argmin(-1))
    bad = linear_checkpoint()
    bad["model_weight"]["2.weight"] = torch.zeros(3, 3)
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(QuantizerError, match=r"bad\.pt: model_weight does not match.*2\.weight"):
        load_quantizer(tmp_path / "bad.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(QuantizerError, match=r"other\.pt: neither a k-means file"):
        load_quantizer(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_quantizer(tmp_path / "nope.pt")


def test_assemble_linear_quantizer_saves_and_reloads(tmp_path):
    """``assemble --kmeans`` takes Meta's linear layout; the tokenizer directory keeps it."""
    from spiritlm.tokenizers.cli import assemble
    from spiritlm.tokenizers.features import FeatureConfig, load_backend

    ckpt = linear_checkpoint(seed=4, vocab=9, dim=39, upstream=50)  # 39 = MFCC dim
    torch.save(ckpt, tmp_path / "L11_quantizer_500.pt")
    assemble(hubert="mfcc", kmeans=str(tmp_path / "L11_quantizer_500.pt"), out=str(tmp_path / "tok"))
    assert (tmp_path / "tok" / "units" / "linear_quantizer.pt").is_file()
    assert not (tmp_path / "tok" / "units" / "kmeans.pt").exists()
    saved = torch.load(tmp_path / "tok" / "units" / "linear_quantizer.pt", weights_only=True)
    assert saved["model_cfg"] == ckpt["model_cfg"]
    tok = SpeechTokenizer.load(tmp_path / "tok")
    rng = np.random.default_rng(0)
    wavs = [0.1 * rng.standard_normal(n).astype(np.float32) for n in (16_000, 9_000)]
    feats = load_backend(FeatureConfig(backend="mfcc"), "cpu").extract(wavs)
    got = tok.encode_streams(wavs)
    for f, g in zip(feats, got):
        np.testing.assert_array_equal(g["hubert"], meta_fill_reference(mlp_reference(ckpt["model_weight"], f).argmax(-1), 9))


# ---------------------------------------------------------------------------------------------
# F0: FCPE and pYAAPT
# ---------------------------------------------------------------------------------------------


def harmonic_tone(f0: float, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.5 * sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 6))).astype(np.float32)


@pytest.mark.parametrize("backend", ["fcpe", "pyaapt"])
@pytest.mark.parametrize("f0", [110.0, 220.0])
def test_metas_f0_backends_on_a_harmonic_tone(backend, f0):
    wav = harmonic_tone(f0)
    (est, vuv), (interp, vuv2) = extract_f0_batch([wav], F0Config(backend=backend)) + extract_f0_batch([wav], F0Config(backend=backend), interpolated=True)
    assert est.shape == vuv.shape == (SR // 80 + 1,)
    assert vuv.mean() > 0.8
    assert abs(np.median(est[vuv > 0]) / f0 - 1) < 0.03
    np.testing.assert_array_equal(vuv, vuv2)
    assert ((est > 0) == (vuv > 0)).all()
    np.testing.assert_allclose(interp[vuv > 0], est[vuv > 0])


@pytest.mark.parametrize("backend", ["fcpe", "pyaapt"])
def test_metas_f0_backends_find_no_voicing_in_silence(backend):
    wavs = [np.zeros(8000, np.float32)]
    if backend == "fcpe":  # pYAAPT peak-normalises its input (as pGSLM), so faint noise becomes loud noise
        wavs.append(1e-4 * np.random.default_rng(0).standard_normal(8000).astype(np.float32))
    for f0, vuv in extract_f0_batch(wavs, F0Config(backend=backend)):
        assert f0.shape == (101,) and vuv.sum() == 0 and (f0 == 0).all()


def test_fcpe_equals_torchfcpe_infer_with_metas_settings():
    from torchfcpe import spawn_bundled_infer_model

    rng = np.random.default_rng(0)
    # voiced tone, a gap of noise, another tone: unvoiced frames inside and at the edges
    wav = np.concatenate([1e-3 * rng.standard_normal(2000), harmonic_tone(130, 0.4), 1e-3 * rng.standard_normal(3000), harmonic_tone(260, 0.3),
                          1e-3 * rng.standard_normal(1500)]).astype(np.float32)
    model = spawn_bundled_infer_model(device="cpu")
    n = len(wav) // 80 + 1
    f0, uv = model.infer(torch.from_numpy(wav)[None, :, None], sr=SR, decoder_mode="local_argmax", threshold=0.05, f0_min=50, f0_max=1100,
                         interp_uv=True, output_interp_target_length=n, retur_uv=True)
    (got, vuv), = extract_f0_batch([wav], F0Config(backend="fcpe"), interpolated=True)
    assert 0.2 < vuv.mean() < 0.9
    np.testing.assert_allclose(got, f0.reshape(-1).numpy(), rtol=1e-6)
    np.testing.assert_array_equal(vuv, 1 - uv.reshape(-1).numpy())


def test_fcpe_weights_ship_with_the_package_and_load_weights_only():
    import torchfcpe

    assets = os.path.join(os.path.dirname(torchfcpe.__file__), "assets")
    files = [f for f in os.listdir(assets) if f.endswith(".pt")]
    assert files
    ckpt = torch.load(os.path.join(assets, files[0]), map_location="cpu", weights_only=True)
    assert "config_dict" in ckpt


def test_pyaapt_follows_pgslm_preprocessing_and_interpolation():
    """pYAAPT with pGSLM's settings, then scipy's interp1d over zeros (edges held)."""
    import amfm_decompy.basic_tools as basic
    import amfm_decompy.pYAAPT as pYAAPT
    from scipy.interpolate import interp1d

    rng = np.random.default_rng(1)
    wav = np.concatenate([1e-3 * rng.standard_normal(2400), harmonic_tone(140, 0.5), 1e-3 * rng.standard_normal(1600)]).astype(np.float32)
    x = wav[: len(wav) // 80 * 80].astype(np.float64)
    x = np.pad(x / np.abs(x).max() * 0.95, (160, 160))
    p = pYAAPT.yaapt(basic.SignalObj(x, SR), frame_length=20.0, frame_space=5.0, nccf_thresh1=0.25, tda_frame_length=25.0)
    vals = np.asarray(p.samp_values, np.float64)
    t = np.arange(len(vals))
    nz = vals != 0
    ref = interp1d(t[nz], vals[nz], bounds_error=False, kind="linear", fill_value=0)(t)
    ref[: t[nz][0]] = vals[nz][0]
    ref[t[nz][-1] + 1 :] = vals[nz][-1]
    (got, vuv), = extract_f0_batch([wav], F0Config(backend="pyaapt"), interpolated=True)
    n = len(wav) // 80 + 1
    assert len(ref) == n - 1  # YAAPT's count; the last frame is repeated
    np.testing.assert_allclose(got[: n - 1], ref, rtol=1e-5)
    np.testing.assert_array_equal(vuv[: n - 1], np.asarray(p.vuv, np.float32))
    assert got[-1] == got[-2] and vuv[-1] == vuv[-2]


# ---------------------------------------------------------------------------------------------
# speaker statistics and Meta's pitch quantizer
# ---------------------------------------------------------------------------------------------


def meta_f0_quantizer(folder, speaker_stats=None, seed=0):
    """A random checkpoint in the layout of Meta's vqvae_f0_quantizer (jukebox module names)."""
    from spiritlm.tokenizers.meta_pitch import MetaF0Encoder

    enc = dict(input_emb_width=2, output_emb_width=8, levels=1, downs_t=[4], strides_t=[2], width=8, depth=1, m_conv=1.0, dilation_growth_rate=3)
    vq = dict(l_bins=16, emb_width=8, mu=0.99, levels=1)
    torch.manual_seed(seed)
    model = MetaF0Encoder(enc, vq)
    model.vq.level_blocks[0].k.normal_()
    os.makedirs(folder, exist_ok=True)
    torch.save({"model": dict(model.state_dict())}, os.path.join(folder, "model.pt"))
    cfg = {"encoder_params": enc, "vq_params": vq, "decoder_params": enc, "features": "norm_f0_interp,vuv", "speaker_norm": True}
    if speaker_stats:
        cfg["speaker_stats"] = speaker_stats
    with open(os.path.join(folder, "config.yaml"), "w") as f:
        yaml.safe_dump(cfg, f)
    return model


def test_speaker_stats_written_in_metas_format_and_read_back(tmp_path):
    f0a = np.array([0, 100, 120, 0, 140], np.float32)
    f0b = np.array([200, 0, 0, 220], np.float32)
    stats = meta_speaker_stats([("a", f0a), ("b", f0b), ("a", np.array([0, 160], np.float32)), ("silent", np.zeros(4, np.float32))])
    assert set(stats) == {"a", "b"}
    np.testing.assert_allclose(stats["a"]["f0_mean"], 130.0)
    np.testing.assert_allclose(stats["a"]["logf0_mean"], np.log([100, 120, 140, 160]).mean())
    np.testing.assert_allclose(stats["b"]["f0_std"], 10.0)
    save_meta_speaker_stats(tmp_path / "speaker_stats.pt", stats)
    raw = torch.load(tmp_path / "speaker_stats.pt", weights_only=True)  # what Meta's code reads
    assert raw["a"]["f0_mean"] == pytest.approx(130.0)
    assert load_meta_speaker_stats(tmp_path / "speaker_stats.pt") == pytest.approx({"a": 130.0, "b": 210.0})
    torch.save([1, 2], tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"bad\.pt: expected"):
        load_meta_speaker_stats(tmp_path / "bad.pt")
    torch.save({"a": {"mean": 3.0}}, tmp_path / "bad2.pt")
    with pytest.raises(ValueError, match=r"bad2\.pt: speaker 'a' has no numeric 'f0_mean'"):
        load_meta_speaker_stats(tmp_path / "bad2.pt")


def test_meta_pitch_uses_speaker_stats_named_by_its_config(tmp_path):
    from spiritlm.tokenizers.meta_pitch import MetaPitchTokenizer

    folder = tmp_path / "vqvae_f0_quantizer"
    # the config names a path on Meta's cluster; the file sits in the folder under that name
    meta_f0_quantizer(folder, speaker_stats="/checkpoint/somebody/f0_stats/speaker_stats.pt")
    torch.save({"spkA": {"f0_mean": 120.0, "f0_std": 20.0}}, folder / "speaker_stats.pt")
    tok = MetaPitchTokenizer(folder)
    assert tok.speaker_means == {"spkA": 120.0}
    assert tok.cfg.f0.backend == "fcpe"
    contour = np.array([100, 100, 200, 300, 300], np.float32)  # already interpolated, as the F0 backends return it
    vuv = np.array([0, 1, 0, 1, 0], np.float32)
    # Meta: subtract the speaker's mean F0 in Hz on non-zero frames ...
    np.testing.assert_allclose(tok.features(contour, vuv, "spkA"), [contour - 120.0, vuv])
    # ... else the contour's mean over voiced frames (linear Hz): (100 + 300) / 2
    np.testing.assert_allclose(tok.features(contour, vuv, "someone"), [contour - 200.0, vuv])
    np.testing.assert_allclose(tok.features(contour, vuv, None), [contour - 200.0, vuv])
    # no file: utterance means
    meta_f0_quantizer(tmp_path / "q2", speaker_stats="/checkpoint/somebody/missing.pt")
    assert MetaPitchTokenizer(tmp_path / "q2").speaker_means == {}
    # an explicit file wins
    save_meta_speaker_stats(tmp_path / "mine.pt", {"spkB": {"f0_mean": 90.0}})
    assert MetaPitchTokenizer(tmp_path / "q2", speaker_stats=tmp_path / "mine.pt").speaker_means == {"spkB": 90.0}


def test_tokenize_passes_the_manifest_speaker_to_metas_quantizer(tmp_path):
    """``spiritlm tokenize``: pitch codes of a known speaker use its f0_mean, others their own mean."""
    import soundfile as sf

    from spiritlm.tokenizers.f0 import extract_f0
    from spiritlm.tokenizers.features import FeatureConfig, load_backend
    from spiritlm.tokenizers.meta_pitch import MetaPitchTokenizer
    from spiritlm.tokenizers.pitch import PitchConfig
    from spiritlm.tokenizers.speech_tokenizer import UnitConfig, UnitTokenizer
    from spiritlm.tokenizers.style import StyleCNN, StyleConfig, StyleTokenizer
    from spiritlm.tokenizers.tokenize_cli import tokenize

    folder = tmp_path / "vqvae_f0_quantizer"
    meta_f0_quantizer(folder, speaker_stats="speaker_stats.pt")  # relative to the folder
    save_meta_speaker_stats(folder / "speaker_stats.pt", {"spkA": {"f0_mean": 300.0}})
    pitch = MetaPitchTokenizer(folder, cfg=PitchConfig(f0=F0Config(backend="dio")))  # DIO: fast and exact to re-run here
    scfg = StyleConfig(n_mels=16, channels=8, layers=1, embed_dim=4, labels=["x"])
    style = StyleTokenizer(StyleCNN(scfg), scfg, np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32))
    mfcc = load_backend(FeatureConfig(backend="mfcc"), "cpu")
    SpeechTokenizer(UnitTokenizer(mfcc, np.random.default_rng(1).standard_normal((5, 39)).astype(np.float32), UnitConfig()), pitch, style).save(tmp_path / "tok")
    wav = harmonic_tone(150, 1.3)
    sf.write(tmp_path / "a.wav", wav, SR)
    lines = [{"id": "known", "audio": str(tmp_path / "a.wav"), "speaker": "spkA"}, {"id": "unknown", "audio": str(tmp_path / "a.wav"), "speaker": "spkZ"}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    tokenize(manifest=str(tmp_path / "m.jsonl"), speech_tokenizer=str(tmp_path / "tok"), out=str(tmp_path / "units.jsonl"))
    got = {json.loads(x)["id"]: json.loads(x)["pitch"] for x in (tmp_path / "units.jsonl").read_text().splitlines()}
    # reference input: DIO F0 interpolated over unvoiced frames, minus the mean in Hz, and voicing
    f0, vuv = extract_f0(wav, F0Config(backend="dio"))
    voiced = np.flatnonzero(f0 > 0)
    contour = np.interp(np.arange(len(f0)), voiced, f0[voiced])
    loaded = SpeechTokenizer.load(tmp_path / "tok").pitch
    for key, mean in (("known", 300.0), ("unknown", contour[vuv > 0].mean())):
        x = np.stack([contour - mean, vuv]).astype(np.float32)
        want = loaded.encode_features([x])[0]
        assert got[key] == " ".join(map(str, want.tolist())), key
    assert got["known"] != got["unknown"]


# ---------------------------------------------------------------------------------------------
# assemble --meta_checkpoints
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def meta_release(tmp_path_factory):
    """A fake ``checkpoints/`` folder in the layout of Meta's release, with tiny models."""
    sys.path.insert(0, os.path.dirname(__file__))
    from fixtures import random_fairseq_state_dict, small_cfg, write_checkpoint
    from transformers import Wav2Vec2Config, Wav2Vec2ForSequenceClassification

    root = tmp_path_factory.mktemp("meta") / "checkpoints"
    st = root / "speech_tokenizer"
    (st / "hubert_25hz").mkdir(parents=True)
    cfg = small_cfg()  # 3 layers, dim 32, 25 Hz conv chain
    write_checkpoint(st / "hubert_25hz" / "mhubert_base_25hz.pt", cfg, random_fairseq_state_dict(cfg), "meta")
    ckpt = linear_checkpoint(seed=5, vocab=20, dim=32, upstream=45)
    torch.save(ckpt, st / "hubert_25hz" / "L11_quantizer_500.pt")
    meta_f0_quantizer(st / "vqvae_f0_quantizer", speaker_stats="/large_experiments/speaker_stats.pt")
    torch.manual_seed(0)
    wcfg = Wav2Vec2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37, conv_dim=(8, 8), conv_stride=(5, 64),
                          conv_kernel=(10, 64), conv_bias=True, num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2,
                          classifier_proj_size=16, num_labels=7)
    Wav2Vec2ForSequenceClassification(wcfg).save_pretrained(st / "style_encoder_w2v2", safe_serialization=False)  # pytorch_model.bin, as Meta's
    return root, ckpt


def test_assemble_meta_release_base(meta_release, tmp_path):
    from spiritlm.tokenizers.cli import assemble
    from spiritlm.tokenizers.features import FeatureConfig, load_backend

    root, ckpt = meta_release
    assemble(meta_checkpoints=str(root), layer=2, out=str(tmp_path / "base"))
    tok = SpeechTokenizer.load(tmp_path / "base")
    assert tok.kind == "base" and isinstance(tok.units.quantizer, LinearQuantizer) and tok.units.n_units == 20
    wavs = [harmonic_tone(120, 1.0) + 0.05 * np.random.default_rng(i).standard_normal(SR).astype(np.float32) for i in range(2)]
    wavs[1] = wavs[1][:11_000]
    hub = load_backend(FeatureConfig(backend="fairseq-hubert", checkpoint=str(root / "speech_tokenizer" / "hubert_25hz" / "mhubert_base_25hz.pt"), layer=2), "cpu")
    for f, got in zip(hub.extract(wavs), tok.encode_streams(wavs)):
        np.testing.assert_array_equal(got["hubert"], meta_fill_reference(mlp_reference(ckpt["model_weight"], f).argmax(-1), 20))
    # the speech_tokenizer subfolder is accepted too
    assemble(meta_checkpoints=str(root / "speech_tokenizer"), layer=2, out=str(tmp_path / "base2"))
    assert SpeechTokenizer.load(tmp_path / "base2").kind == "base"


def test_assemble_meta_release_expressive(meta_release, tmp_path):
    from spiritlm.tokenizers.cli import assemble
    from spiritlm.tokenizers.meta_pitch import MetaPitchTokenizer

    root, _ = meta_release
    assemble(meta_checkpoints=str(root), expressive=True, layer=2, out=str(tmp_path / "expr"))
    tok = SpeechTokenizer.load(tmp_path / "expr")
    assert tok.kind == "expressive" and type(tok.pitch) is MetaPitchTokenizer
    assert tok.pitch.cfg.f0.backend == "fcpe" and tok.pitch.speaker_means == {}
    assert tok.style.cfg.backend == "w2v2" and tok.style.cfg.mode == "classifier"
    wav = harmonic_tone(150, 2.0)
    s = tok.encode_streams([wav])[0]
    assert len(s["pitch"]) == tok.pitch.num_tokens(len(wav)) == (len(wav) // 80 + 1) // 16
    assert len(s["style"]) == 2 and s["style"].max() < 7
    assert tok.encode_string(wav).startswith("[St")
    # --f0 picks another backend for Meta's quantizer; pYAAPT gives Meta's N // 80 frames
    assemble(meta_checkpoints=str(root), expressive=True, layer=2, f0="pyaapt", out=str(tmp_path / "expr2"))
    tok2 = SpeechTokenizer.load(tmp_path / "expr2")
    assert tok2.pitch.cfg.f0.backend == "pyaapt"
    wav = wav[: 16 * 80 * 10]  # N // 80 = 160 frames -> 10 tokens (N // 80 + 1 would give 10 too, but 161 frames)
    (contour, vuv), = tok2.pitch.f0([wav])
    assert len(contour) == len(vuv) == 160 and tok2.pitch.num_tokens(len(wav)) == 10
    assert len(tok2.encode_streams([wav])[0]["pitch"]) == 10
    assert tok.pitch.num_tokens(16 * 80 * 10 - 80) == 10 and tok2.pitch.num_tokens(16 * 80 * 10 - 80) == 9


def test_assemble_meta_release_errors_name_the_missing_file(meta_release, tmp_path):
    import shutil

    from spiritlm.errors import UserError
    from spiritlm.tokenizers.cli import assemble

    root, _ = meta_release
    broken = tmp_path / "checkpoints"
    shutil.copytree(root, broken)
    os.remove(broken / "speech_tokenizer" / "vqvae_f0_quantizer" / "config.yaml")
    assemble(meta_checkpoints=str(broken), layer=2, out=str(tmp_path / "ok"))  # base does not need it
    with pytest.raises(UserError, match=r"vqvae_f0_quantizer/config\.yaml: missing from Meta's checkpoint folder .*--expressive true"):
        assemble(meta_checkpoints=str(broken), expressive=True, layer=2, out=str(tmp_path / "x"))
    os.remove(broken / "speech_tokenizer" / "hubert_25hz" / "L11_quantizer_500.pt")
    with pytest.raises(UserError, match=r"hubert_25hz/L11_quantizer_500\.pt: missing"):
        assemble(meta_checkpoints=str(broken), out=str(tmp_path / "x"))
    with pytest.raises(UserError, match="drop --hubert"):
        assemble(meta_checkpoints=str(root), hubert="mfcc", out=str(tmp_path / "x"))
    with pytest.raises(UserError, match="--f0 yin: choose from"):
        assemble(meta_checkpoints=str(root), expressive=True, f0="yin", out=str(tmp_path / "x"))
    with pytest.raises(UserError, match="--hubert and --kmeans"):
        assemble(out=str(tmp_path / "x"))


def test_assemble_cli_prints_one_line(meta_release, tmp_path, capsys):
    from spiritlm import cli

    with pytest.raises(SystemExit) as exc:
        cli.main(["tokenizer", "assemble", "--meta_checkpoints", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")])
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nowhere: not a folder (--meta_checkpoints)" in err[0]
