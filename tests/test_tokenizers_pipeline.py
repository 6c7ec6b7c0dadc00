"""End to end on a small synthetic corpus: training with metrics, the tokenizer directory,
``spiritlm tokenize`` (bad audio, resume, shards) and Spirit LM's framing on real speech."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf
import torch

from spiritlm.tokenizers.features import FeatureConfig, MfccConfig, conv_chain_frames
from spiritlm.tokenizers.kmeans import KMeansConfig
from spiritlm.tokenizers.speech_tokenizer import SpeechTokenizer
from spiritlm.tokenizers.style import StyleConfig, StyleTrainConfig, num_style_frames
from spiritlm.tokenizers.tokenize_cli import tokenize, tokenize_manifest
from spiritlm.tokenizers.train import TrainPreset, train_tokenizer
from spiritlm.tokenizers.vqvae import VQVAEConfig, VQVAETrainConfig, num_codes

from fixtures import REAL_FLAC

REAL = str(REAL_FLAC)


def small_preset() -> TrainPreset:
    return TrainPreset(
        features=FeatureConfig(backend="mfcc", mfcc=MfccConfig(cmvn=False)),
        units_kmeans=KMeansConfig(n_clusters=40, n_init=3, batch_size=2000),
        expressive=True,
        vqvae=VQVAEConfig(channels=32, latent_dim=16, res_depth=1, vuv_weight=1.0),
        vqvae_train=VQVAETrainConfig(steps=300, batch_size=16, crop_frames=128, lr=3e-3, log_every=100, checkpoint_every=0),
        style=StyleConfig(n_mels=32, channels=32, layers=2, embed_dim=16),
        style_train=StyleTrainConfig(steps=150, batch_size=8, crop_frames=100, log_every=50),
        style_kmeans=KMeansConfig(n_clusters=8, n_init=3, max_frames=None),
    )


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    from spiritlm.corpus.cli import synth

    out = tmp_path_factory.mktemp("tok_corpus")
    synth(out=str(out), num_utts=40, seed=0, splits={"train": 0.7, "valid": 0.05, "test": 0.25}, progress=False)
    return out


@pytest.fixture(scope="session")
def trained(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok_tiny")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        metrics = train_tokenizer(str(corpus / "manifest.jsonl"), str(out), small_preset(), seed=0)
    finally:
        torch.set_num_threads(n)
    return out, metrics


def test_metrics_far_above_chance(trained):
    out, m = trained
    on_disk = json.loads((out / "metrics.json").read_text())
    for key in ("pnmi", "phone_purity", "f0_rmse_cents", "vuv_error", "codebook_perplexity", "codebook_usage", "style_purity"):
        assert isinstance(on_disk[key], float) and np.isfinite(on_disk[key]), key
    assert m["eval_split"] == "test" and m["num_eval_utts"] == 10
    assert m["pnmi"] > 0.25
    assert m["phone_purity"] > 2 * m["phone_majority_rate"]
    assert m["style_purity"] > m["style_majority_rate"] + 0.15
    assert m["f0_rmse_cents"] < 0.5 * m["f0_rmse_cents_speaker_mean_baseline"]
    assert m["vuv_error"] < 0.5  # 300 steps; voicing is learnt later (see the slow test)
    assert 0.5 < m["codebook_usage"] <= 1 and 8 <= m["codebook_perplexity"] <= 64
    # the training speakers' F0 means, also in Meta's speaker_stats format (Hz)
    from spiritlm.tokenizers.f0 import load_meta_speaker_stats

    means = load_meta_speaker_stats(out / "pitch" / "speaker_stats.pt")
    assert set(means) == set(SpeechTokenizer.load(out).pitch.stats.speakers) and len(means) >= 2
    assert all(50 < v < 600 for v in means.values())


@pytest.mark.slow
def test_tiny_preset_on_200_utterances(tmp_path):
    """The embedded preset as `spiritlm tokenizer train --preset tiny` runs it (~1.5 min)."""
    from spiritlm.corpus.cli import synth
    from spiritlm.tokenizers.cli import train

    synth(out=str(tmp_path / "c"), num_utts=200, seed=0, progress=False)
    train(manifest=str(tmp_path / "c" / "manifest.jsonl"), out=str(tmp_path / "tok"), preset="tiny", threads=1)
    m = json.loads((tmp_path / "tok" / "metrics.json").read_text())
    assert m["pnmi"] > 0.45 and m["phone_purity"] > 2.5 * m["phone_majority_rate"]
    assert m["f0_rmse_cents"] < 120 and m["f0_rmse_cents"] < 0.3 * m["f0_rmse_cents_speaker_mean_baseline"]
    assert m["vuv_error"] < 0.05
    assert m["codebook_usage"] > 0.8 and m["codebook_perplexity"] > 20
    assert m["style_purity"] > 0.8 and m["style_purity"] > m["style_majority_rate"] + 0.3
    if os.path.exists(REAL):  # pitch codes of real speech decode back to its contour
        from spiritlm.audio import load_audio
        from spiritlm.tokenizers import metrics as M

        tok = SpeechTokenizer.load(tmp_path / "tok")
        wav = load_audio(REAL)
        (f0, vuv), = tok.pitch.f0([wav])
        codes = tok.pitch.encode([wav])[0]
        assert codes.shape == (114,)
        rec = tok.pitch.reconstruct(codes)
        f0_hat = np.exp(rec[0] * tok.pitch.stats.global_std + tok.pitch.stats.mean_for(None, f0))
        cents, vuv_err = M.f0_errors(f0, vuv, f0_hat, (rec[1] > 0.5).astype(np.float32))
        assert np.sqrt(np.mean(cents**2)) < 250 and vuv_err.mean() < 0.1  # seed 0: 158 cents, 0.033
        assert abs(np.log(np.median(f0_hat[rec[1] > 0.5]) / 143.0)) < 0.1


def test_tokenizer_directory_round_trip(trained, corpus):
    out, _ = trained
    tok = SpeechTokenizer.load(out)
    assert tok.kind == "expressive"
    wavs = sorted((corpus / "wavs").glob("*.wav"))[:3]
    units = tok.encode_units([str(w) for w in wavs])
    assert [u["audio"] for u in units] == [str(w) for w in wavs]
    assert set(units[0]) == {"audio", "hubert", "pitch", "style"}
    # one at a time == batched
    for w, u in zip(wavs, units):
        assert tok.encode_units(str(w)) == u
    # Spirit LM's framing for each stream
    for w, u in zip(wavs, units):
        n = sf.info(str(w)).frames
        assert len(u["hubert"].split()) == conv_chain_frames(n)
        assert len(u["pitch"].split()) == num_codes(n // 80 + 1)
        assert len(u["style"].split()) == -(-num_style_frames(n) // 50)
    # save again -> identical tokens
    tok.save(out.parent / "resaved")
    assert SpeechTokenizer.load(out.parent / "resaved").encode_units([str(w) for w in wavs]) == units
    s = tok.encode_string(str(wavs[0]))
    assert s.startswith("[St") and "[Pi" in s and "[Hu" in s


@pytest.mark.skipif(not os.path.exists(REAL), reason="real utterance not available")
def test_tokenize_real_speech_framing(trained, tmp_path, capsys):
    out, _ = trained
    manifest = tmp_path / "real.jsonl"
    manifest.write_text(json.dumps({"id": "7143-88743-0029", "audio": REAL}) + "\n")
    units = tmp_path / "units.jsonl"
    tokenize(manifest=str(manifest), speech_tokenizer=str(out), out=str(units))
    rec = json.loads(units.read_text())
    assert rec["id"] == "7143-88743-0029" and rec["audio"] == REAL
    assert len(rec["hubert"].split()) == 228
    assert len(rec["pitch"].split()) == 114
    assert len(rec["style"].split()) == 10
    pitch = np.array(rec["pitch"].split(), dtype=int)
    assert len(set(pitch.tolist())) >= 4  # pitch codes move with the contour


def test_tokenize_skips_bad_audio_and_resumes(trained, corpus, tmp_path):
    out, _ = trained
    good = [json.loads(line) for line in (corpus / "manifest.jsonl").read_text().splitlines()[:4]]
    bad_file = tmp_path / "garbage.wav"
    bad_file.write_bytes(b"this is not audio" * 10)
    short = tmp_path / "short.wav"
    sf.write(short, np.zeros(100, np.float32), 16000)
    lines = [
        {"id": good[0]["id"], "audio": str(corpus / good[0]["audio"]), "speaker": good[0]["speaker"]},
        {"id": "missing", "audio": str(tmp_path / "nope.wav")},
        {"id": good[1]["id"], "audio": str(corpus / good[1]["audio"])},
        {"id": "garbage", "audio": str(bad_file)},
        {"id": "short", "audio": str(short)},
        {"id": good[2]["id"], "audio": str(corpus / good[2]["audio"])},
        {"id": good[3]["id"], "audio": str(corpus / good[3]["audio"])},
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    units = tmp_path / "units.jsonl"
    tokenize(manifest=str(manifest), speech_tokenizer=str(out), out=str(units), batch_size=3, allow_skips=True)
    written = [json.loads(x) for x in units.read_text().splitlines()]
    assert [w["id"] for w in written] == [g["id"] for g in good]
    errors = json.loads((tmp_path / "units.jsonl.errors.json").read_text())
    assert errors["skipped"] == 3
    assert {e["id"] for e in errors["errors"]} == {"missing", "garbage", "short"}
    assert any("nope.wav" in e["error"] for e in errors["errors"])
    # rerun: nothing new; a truncated last line (interrupted run) is ignored, kept apart, and redone
    text = units.read_text()
    units.write_text(text[: -len(text.splitlines()[-1]) // 2 - 1])
    tok = SpeechTokenizer.load(out)
    rep = tokenize_manifest(str(manifest), tok, str(units), progress=False)
    assert rep.written == 1 and rep.already_done == 3 and rep.skipped == 3 and rep.torn_lines == 1
    lines = units.read_text().splitlines()
    assert [json.loads(x)["id"] for x in lines[:3] + lines[4:]] == [g["id"] for g in good]
    assert json.loads(lines[-1]) == written[-1]


def test_tokenize_shards_partition_the_manifest(trained, corpus, tmp_path):
    out, _ = trained
    items = [json.loads(x) for x in (corpus / "manifest.jsonl").read_text().splitlines()[:5]]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"id": x["id"], "audio": str(corpus / x["audio"])}) + "\n" for x in items))
    tok = SpeechTokenizer.load(out)
    ids = []
    for shard in range(2):
        path = tmp_path / f"u{shard}.jsonl"
        tokenize_manifest(str(manifest), tok, str(path), shard=shard, num_shards=2, progress=False)
        ids.append([json.loads(x)["id"] for x in path.read_text().splitlines()])
    assert ids == [[items[i]["id"] for i in (0, 2, 4)], [items[i]["id"] for i in (1, 3)]]
    with pytest.raises(ValueError, match="shard"):
        tokenize_manifest(str(manifest), tok, str(tmp_path / "x.jsonl"), shard=2, num_shards=2)


def test_dump_features_and_assemble(trained, corpus, tmp_path):
    from spiritlm.tokenizers.cli import assemble, dump_features

    out, _ = trained
    items = [json.loads(x) for x in (corpus / "manifest.jsonl").read_text().splitlines()[:3]]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"id": x["id"], "audio": str(corpus / x["audio"])}) + "\n" for x in items))
    dump_features(manifest=str(manifest), out=str(tmp_path / "feats"), backend="mfcc")
    tok = SpeechTokenizer.load(out)
    for x in items:
        f = np.load(tmp_path / "feats" / f"{x['id']}.npy")
        n = sf.info(str(corpus / x["audio"])).frames
        assert f.dtype == np.float32 and f.shape == (conv_chain_frames(n), 39)
    # assembling the trained parts gives the trained tokenizer back
    assemble(hubert="mfcc", kmeans=str(out / "units" / "kmeans.pt"), out=str(tmp_path / "asm"),
             pitch=str(out / "pitch"), style=str(out / "style"))
    wavs = [str(corpus / x["audio"]) for x in items]
    # the trained tokenizer's MFCC options (no CMVN) are not assemble's default (CMVN): same
    # framing, different features
    asm = SpeechTokenizer.load(tmp_path / "asm")
    a, b = asm.encode_units(wavs), tok.encode_units(wavs)
    assert [u["pitch"] for u in a] == [u["pitch"] for u in b] and [u["style"] for u in a] == [u["style"] for u in b]
    assert [len(u["hubert"].split()) for u in a] == [len(u["hubert"].split()) for u in b]


def test_assemble_base_from_fairseq_checkpoint(corpus, tmp_path):
    import sys

    sys.path.insert(0, os.path.dirname(__file__))
    from fixtures import random_fairseq_state_dict, small_cfg, write_checkpoint

    from spiritlm.tokenizers.cli import assemble
    from spiritlm.tokenizers.kmeans import save_kmeans

    cfg = small_cfg()
    write_checkpoint(tmp_path / "mhubert.pt", cfg, random_fairseq_state_dict(cfg), "meta")
    save_kmeans(tmp_path / "L2_quantizer_20.pt", np.random.default_rng(0).standard_normal((20, 32)).astype(np.float32))
    assemble(hubert=str(tmp_path / "mhubert.pt"), kmeans=str(tmp_path / "L2_quantizer_20.pt"), layer=2, out=str(tmp_path / "base"))
    tok = SpeechTokenizer.load(tmp_path / "base")
    assert tok.kind == "base"
    wav = sorted((corpus / "wavs").glob("*.wav"))[0]
    u = tok.encode_units(str(wav))
    assert set(u) == {"audio", "hubert"}
    assert len(u["hubert"].split()) == conv_chain_frames(sf.info(str(wav)).frames)
    assert tok.encode_string(str(wav)).startswith("[Hu")


def _meta_f0_quantizer(folder, seed=0):
    """A random checkpoint in the layout of Meta's speech_tokenizer/vqvae_f0_quantizer."""
    import yaml

    from spiritlm.tokenizers.meta_pitch import MetaF0Encoder

    enc = dict(input_emb_width=2, output_emb_width=16, levels=1, downs_t=[4], strides_t=[2], width=16, depth=2, m_conv=1.0, dilation_growth_rate=3)
    vq = dict(l_bins=64, emb_width=16, mu=0.99, levels=1)
    torch.manual_seed(seed)
    model = MetaF0Encoder(enc, vq)
    model.vq.level_blocks[0].k.normal_()
    sd = dict(model.state_dict())
    sd["decoder.level_blocks.0.model.0.weight"] = torch.zeros(16, 16, 3)  # ignored
    sd["decoder.out.weight"] = torch.zeros(2, 16, 3)
    os.makedirs(folder, exist_ok=True)
    torch.save({"model": sd}, os.path.join(folder, "model.pt"))
    with open(os.path.join(folder, "config.yaml"), "w") as f:
        yaml.safe_dump({"encoder_params": enc, "vq_params": vq, "decoder_params": enc, "features": "norm_f0_interp,vuv", "speaker_norm": True}, f)
    return sd


def test_meta_pitch_quantizer_layout_and_assemble(trained, tmp_path):
    from spiritlm.tokenizers.cli import assemble
    from spiritlm.tokenizers.meta_pitch import MetaPitchTokenizer

    out, _ = trained
    sd = _meta_f0_quantizer(tmp_path / "vqvae_f0_quantizer")
    # the module names of Meta's release
    for key in ("encoder.level_blocks.0.model.0.0.weight", "encoder.level_blocks.0.model.0.1.model.1.model.1.weight",
                "encoder.level_blocks.0.model.3.1.model.0.model.3.bias", "encoder.level_blocks.0.model.4.weight", "vq.level_blocks.0.k"):
        assert key in sd, key
    assert sd["encoder.level_blocks.0.model.0.1.model.1.model.1.weight"].shape == (16, 16, 3)  # dilation 3 block
    tok = MetaPitchTokenizer(tmp_path / "vqvae_f0_quantizer")
    wav = (0.3 * np.sin(2 * np.pi * 140 * np.arange(146_160) / 16000)).astype(np.float32)
    codes = tok.encode([wav])[0]
    assert codes.shape == (114,) == (tok.num_tokens(146_160),)
    # Meta's input: the backend's interpolated F0 in Hz minus the speaker (here: utterance) mean
    # over voiced frames, and voicing
    contour = np.array([100, 100, 200, 300, 300], np.float32)
    np.testing.assert_allclose(tok.features(contour, np.array([0, 1, 0, 1, 0], np.float32)), [[-100, -100, 0, 100, 100], [0, 1, 0, 1, 0]])
    assemble(hubert="mfcc", kmeans=str(out / "units" / "kmeans.pt"), out=str(tmp_path / "asm"),
             pitch=str(tmp_path / "vqvae_f0_quantizer"), style=str(out / "style"))
    asm = SpeechTokenizer.load(tmp_path / "asm")
    assert type(asm.pitch) is MetaPitchTokenizer
    np.testing.assert_array_equal(asm.encode_streams([wav])[0]["pitch"], codes)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.yaml").write_text("encoder_params: {}\nvq_params: {}\n")
    torch.save({"model": {}}, bad / "model.pt")
    with pytest.raises(ValueError, match="config.yaml"):
        MetaPitchTokenizer(bad)


def test_training_is_reproducible(corpus, tmp_path):
    """Two runs of one seed give the same files and metrics. Every part is trained (units k-means,
    pitch VQ-VAE, style CNN + k-means), at a tenth of small_preset's steps: reproducibility does not
    depend on the step count, and the test stays a few seconds (test_metrics_far_above_chance holds
    the full-length run)."""
    p = small_preset()
    p = replace(p, vqvae_train=replace(p.vqvae_train, steps=30, log_every=10), style_train=replace(p.style_train, steps=15, log_every=5))
    runs = []
    for name in ("first", "again"):
        n = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            runs.append(train_tokenizer(str(corpus / "manifest.jsonl"), str(tmp_path / name), p, seed=0))
        finally:
            torch.set_num_threads(n)

    def strip(m):  # wall-clock fields aside
        m = {k: v for k, v in m.items() if k != "timings"}
        m["pitch_train_last_log"] = {k: v for k, v in m["pitch_train_last_log"].items() if k != "elapsed_s"}
        return m

    assert strip(runs[1]) == strip(runs[0]) and runs[0]["pitch_train_last_log"]["step"] == 30
    for f in ("units/kmeans.pt", "pitch/model.safetensors", "style/encoder.safetensors", "style/kmeans.pt"):
        assert (tmp_path / "again" / f).read_bytes() == (tmp_path / "first" / f).read_bytes(), f
