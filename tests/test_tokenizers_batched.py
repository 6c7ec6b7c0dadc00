"""Batched HuBERT units equal one-at-a-time units; weight norm folding; bf16 agreement; length bucketing; shards from the launcher."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from spiritlm.errors import UserError
from spiritlm.tokenizers.features import HubertBackend, fold_weight_norm, length_buckets, parse_precision
from spiritlm.tokenizers.kmeans import train_kmeans, KMeansConfig
from spiritlm.tokenizers.speech_tokenizer import UnitConfig, UnitTokenizer
from spiritlm.tokenizers.tokenize_cli import shard_from_env


def tiny_hubert(norm: str, seed: int = 0):
    """A randomly initialised 3-layer HuBERT with a 25 Hz-like strided front end (hop 40 samples)."""
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(seed)
    cfg = HubertConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
                       conv_dim=[16] * 4, conv_kernel=[10, 3, 3, 2], conv_stride=[5, 2, 2, 2],
                       num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                       feat_extract_norm=norm, do_stable_layer_norm=norm == "layer")
    return HubertModel(cfg).eval()


def waves(n: int = 7, seed: int = 0) -> list[np.ndarray]:
    """Utterances of very different lengths (0.05-0.5 s at 16 kHz), tones plus noise."""
    rng = np.random.default_rng(seed)
    out = []
    for k, n_samp in enumerate(rng.integers(800, 8000, n)):
        t = np.arange(n_samp) / 16000
        out.append((0.3 * np.sin(2 * np.pi * (120 + 40 * k) * t) + 0.05 * rng.standard_normal(n_samp)).astype(np.float32))
    return out


@pytest.mark.parametrize("norm", ["group", "layer"])
def test_batched_features_equal_transformers_one_at_a_time(norm):
    ref = tiny_hubert(norm)
    hb = HubertBackend(copy.deepcopy(ref), layer=2)
    wavs = waves()
    batched = hb.extract(wavs)
    with torch.inference_mode():
        for w, f in zip(wavs, batched):
            r = ref(torch.from_numpy(w)[None], output_hidden_states=True).hidden_states[2][0].numpy()
            assert f.shape == r.shape == (hb.num_frames(len(w)), 32)
            np.testing.assert_allclose(f, r, atol=2e-5)
        if norm == "group":
            # the reference run on the padded batch differs: the front end's group norm sees the padding
            from spiritlm.tensors import pad_batch

            x, _ = pad_batch(wavs)
            plain = ref(x, output_hidden_states=True).hidden_states[2]
            short = int(np.argmin([len(w) for w in wavs]))
            n = hb.num_frames(len(wavs[short]))
            assert not np.allclose(plain[short, :n].numpy(), batched[short], atol=1e-3)


@pytest.mark.parametrize("norm", ["group", "layer"])
def test_batched_units_equal_one_at_a_time_units(norm):
    hb = HubertBackend(tiny_hubert(norm), layer=3)
    wavs = waves(9, seed=1)
    feats = [hb.extract([w])[0] for w in wavs]
    centers = train_kmeans(feats, KMeansConfig(n_clusters=12, n_init=1, max_frames=None, batch_size=256))
    tok = UnitTokenizer(hb, centers, UnitConfig())
    single = [tok.encode([w])[0] for w in wavs]
    for bucket in length_buckets([len(w) for w in wavs], budget=20000, max_items=4):
        for i, u in zip(bucket, tok.encode([wavs[i] for i in bucket])):
            np.testing.assert_array_equal(u, single[i])
    all_at_once = tok.encode(wavs)
    assert all(np.array_equal(a, b) for a, b in zip(all_at_once, single))
    assert len({int(x) for u in single for x in u}) > 3  # the comparison is not between constant streams


def test_weight_norm_is_folded_without_changing_outputs():
    ref = tiny_hubert("group")
    model = copy.deepcopy(ref)
    assert fold_weight_norm(model.encoder.pos_conv_embed) == 1
    assert fold_weight_norm(model) == 0  # nothing left to fold
    conv = model.encoder.pos_conv_embed.conv
    assert type(conv) is torch.nn.Conv1d and not hasattr(conv, "parametrizations")
    x = torch.from_numpy(waves(1)[0])[None]
    with torch.inference_mode():
        a = ref(x).last_hidden_state
        b = model(x).last_hidden_state  # the reference (its class shared by deepcopy) still works
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    hb = HubertBackend(tiny_hubert("group"), layer=2)
    assert type(hb.model.encoder.pos_conv_embed.conv) is torch.nn.Conv1d


def test_bf16_units_mostly_agree_with_fp32_and_agreement_is_reported():
    hb = HubertBackend(tiny_hubert("group"), layer=3)
    wavs = waves(6, seed=2)
    feats32 = hb.extract(wavs)
    centers = train_kmeans(feats32, KMeansConfig(n_clusters=8, n_init=1, max_frames=None, batch_size=256))
    tok = UnitTokenizer(hb, centers, UnitConfig())
    u32 = tok.encode(wavs)
    hb.set_precision("bf16")
    assert hb.precision == "bf16"
    feats16 = hb.extract(wavs)
    u16 = tok.encode(wavs)
    hb.set_precision("fp32")
    assert all(f.dtype == np.float32 for f in feats16)
    diff = max(float(np.abs(a - b).max()) for a, b in zip(feats32, feats16))
    assert 0 < diff < 0.5  # bf16 really ran, and stays close
    agree = float(np.mean(np.concatenate(u32) == np.concatenate(u16)))
    print(f"bf16 vs fp32 unit agreement (tiny random HuBERT, 8 clusters): {agree:.4f}")
    assert agree >= 0.9
    assert all(np.array_equal(a, b) for a, b in zip(u32, tok.encode(wavs)))  # back to fp32: same units
    with pytest.raises(ValueError, match="fp32 or bf16"):
        parse_precision("fp16")


def test_length_buckets_sort_by_length_within_budget():
    lengths = [5, 1, 9, 3, None, 7, 2, None, 30]
    batches = length_buckets(lengths, budget=12, max_items=3)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))  # every item once
    assert batches[0] == [8]  # longer than the budget: alone, and first
    assert batches[-1] == [4, 7]  # unknown lengths last, in order
    for b in batches[:-1]:
        assert len(b) <= 3 and (len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 12)
    known = [lengths[i] for b in batches[:-1] for i in b]
    assert known == sorted(known, reverse=True)
    assert length_buckets([], 10, 2) == []


def test_shards_come_from_flags_or_the_launcher():
    assert shard_from_env(1, 4, env={"RANK": "3", "WORLD_SIZE": "8"}) == (1, 4, "flags")
    assert shard_from_env(None, None, env={"RANK": "3", "WORLD_SIZE": "8"}) == (3, 8, "RANK/WORLD_SIZE")
    assert shard_from_env(None, None, env={"SLURM_PROCID": "5", "SLURM_NTASKS": "16"}) == (5, 16, "SLURM_PROCID/SLURM_NTASKS")
    assert shard_from_env(None, None, env={}) == (0, 1, "default")
    with pytest.raises(UserError, match="go together"):
        shard_from_env(2, None, env={})
    with pytest.raises(UserError, match="not integers"):
        shard_from_env(None, None, env={"RANK": "x", "WORLD_SIZE": "2"})


def test_tokenize_buckets_by_length_and_takes_its_shard_from_the_launcher(tmp_path, monkeypatch, capsys):
    import json

    import soundfile as sf

    from spiritlm.tokenizers.features import FeatureConfig, load_backend
    from spiritlm.tokenizers.speech_tokenizer import SpeechTokenizer
    from spiritlm.tokenizers.tokenize_cli import tokenize

    backend = load_backend(FeatureConfig(backend="mfcc"))
    centers = np.random.default_rng(0).standard_normal((6, backend.dim)).astype(np.float32)
    SpeechTokenizer(UnitTokenizer(backend, centers, UnitConfig())).save(tmp_path / "tok")
    lines = []
    for k, w in enumerate(waves(5, seed=3)):
        sf.write(tmp_path / f"u{k}.wav", w, 16000)
        lines.append({"id": f"u{k}", "audio": str(tmp_path / f"u{k}.wav"), "duration": len(w) / 16000})
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))

    def read(path):
        return {r["id"]: r["hubert"] for r in map(json.loads, open(path))}

    tokenize(str(tmp_path / "m.jsonl"), str(tmp_path / "tok"), str(tmp_path / "plain.jsonl"), batch_seconds=0, batch_size=1)
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        tokenize(str(tmp_path / "m.jsonl"), str(tmp_path / "tok"), str(tmp_path / "part-{shard}.jsonl"), batch_seconds=0.3, batch_size=3)
    out = capsys.readouterr().out
    assert "shard 1/2 (RANK/WORLD_SIZE)" in out and "s of audio per second" in out
    part0, part1 = read(tmp_path / "part-0.jsonl"), read(tmp_path / "part-1.jsonl")
    assert sorted(part0) == ["u0", "u2", "u4"] and sorted(part1) == ["u1", "u3"]  # utterance i -> shard i % 2
    ids0 = [json.loads(ln)["id"] for ln in open(tmp_path / "part-0.jsonl")]
    assert ids0 == sorted(ids0, key=lambda i: -lines[int(i[1])]["duration"])  # longest first
    assert {**part0, **part1} == read(tmp_path / "plain.jsonl")  # bucketed batches: the same units


@pytest.mark.parametrize("norm", ["group", "layer"])
def test_bf16_path_agrees_with_fp32_and_batches_like_one_at_a_time(norm):
    """The bf16 path (bf16 products, fp32 norms/residual/quantizer, cached bf16 weights) on a
    deterministic input: features near fp32, >= 95% of units equal on this tiny random model
    (HuBERT-base on speech: 99.7-100%, benchmarks/bench_units_vs_reference.py), and a padded
    batch gives one-at-a-time units."""
    ref = tiny_hubert(norm)
    hb = HubertBackend(copy.deepcopy(ref), layer=3 if norm == "group" else 2)
    wavs = waves(8, seed=3)
    feats32 = hb.extract(wavs)
    centers = train_kmeans(feats32, KMeansConfig(n_clusters=12, n_init=1, max_frames=None, batch_size=256))
    tok = UnitTokenizer(hb, centers, UnitConfig())
    u32 = tok.encode(wavs)
    hb.set_precision("bf16")
    assert hb._low is None  # weights are cast on first use, once
    single16 = [hb.extract([w])[0] for w in wavs]
    cached = dict(hb._low)
    assert cached and all(t.dtype == torch.bfloat16 for v in cached.values() for t in (v if isinstance(v, tuple) else (v,)))
    batched16 = hb.extract(wavs)
    assert all(a is hb._low[k] for k, a in cached.items())  # reused, not recast
    for a, b, f in zip(single16, batched16, feats32):
        assert a.dtype == np.float32 and a.shape == f.shape
        rel = np.abs(a - f).max() / np.abs(f).max()
        assert 0 < rel < 0.05  # bf16 really ran, and stays close
        np.testing.assert_allclose(a, b, atol=0.05 * np.abs(f).max())
    u16 = [tok.encode([w])[0] for w in wavs]
    agree = float(np.mean(np.concatenate(u32) == np.concatenate(u16)))
    assert agree >= 0.95, agree
    hb.to(torch.float64)
    assert hb._low is None  # moved: the bf16 copies are rebuilt from the new weights
    hb.to(torch.float32).set_precision("fp32")
    for a, b in zip(feats32, hb.extract(wavs)):
        np.testing.assert_array_equal(a, b)


def test_folded_first_layer_equals_masked_group_norm():
    """Conv + group norm folded into one convolution (statistics from the input windows) equals
    conv -> group norm over the valid frames, for each utterance of a padded batch."""
    from spiritlm.tensors import pad_batch

    model = tiny_hubert("group")
    hb = HubertBackend(copy.deepcopy(model), layer=1)
    wavs = waves(5, seed=4)
    x, lengths = pad_batch(wavs)
    first = model.feature_extractor.conv_layers[0]
    with torch.inference_mode():
        got = hb._first_layer_group_norm(hb.model.feature_extractor.conv_layers[0], x, lengths)
        for i, w in enumerate(wavs):
            want = first(torch.from_numpy(w)[None, None])[0]  # transformers' conv + GroupNorm + GELU, alone
            torch.testing.assert_close(got[i, :, : want.shape[-1]], want, atol=2e-5, rtol=1e-4)
