"""Streaming tokenizer training: memory-mapped frame shards (atomic, resumable, bounded sampling), chunked k-means, DataLoader crops, and a run that resumes from its shards."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
import soundfile as sf
import torch

from spiritlm.errors import UserError
from spiritlm.tokenizers.features import FeatureConfig, MfccConfig
from spiritlm.tokenizers.kmeans import KMeansConfig, sample_frames, train_kmeans, train_kmeans_chunks
from spiritlm.tokenizers.shards import FrameShards, LazySequence, read_rows
from spiritlm.tokenizers.style import StyleConfig, StyleTrainConfig, cnn_logmels, train_style_cnn
from spiritlm.tokenizers.train import TrainPreset, train_tokenizer
from spiritlm.tokenizers.vqvae import CropBatchSampler, CropDataset, VQVAEConfig, VQVAETrainConfig, train_vqvae

SR = 16_000


def _arrays(n=7, dim=3, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((int(rng.integers(0, 9)), dim)).astype(np.float32) for _ in range(n)]


def test_frame_shards_round_trip_resume_and_bounded_sample(tmp_path, caplog):
    arrays = _arrays()
    calls = []

    def compute(idx):
        calls.append(list(idx))
        return [None if i == 4 else arrays[i] for i in idx], {"samples": [10 * i for i in idx]}

    shards = FrameShards(tmp_path / "feats", len(arrays), shard_items=3)
    assert shards.num_shards == 3 and shards.build(compute) == 3
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
    caplog.set_level(logging.INFO, logger="spiritlm")
    assert again.build(compute) == 1 and calls[-1] == [3, 4, 5]
    assert "2 of 3 shards resumed" in caplog.records[0].getMessage()

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


def test_write_sample_is_the_bounded_sample_on_disk_and_is_reused(tmp_path):
    arrays = _arrays(n=9, dim=4, seed=1)
    shards = FrameShards(tmp_path / "feats", len(arrays), shard_items=2, max_open=1)
    shards.build(lambda idx: ([arrays[i] for i in idx], {}))
    keep = [8, 1, 3, 4, 0]
    for max_frames in (None, 6):
        path = tmp_path / f"sample-{max_frames}.npy"
        n, dim = shards.write_sample(path, keep, max_frames, seed=5)
        want = sample_frames([arrays[i] for i in keep], max_frames, 5)
        assert (n, dim) == want.shape and not list(tmp_path.glob("*.tmp-*"))
        np.testing.assert_array_equal(np.load(path), want)
        np.testing.assert_array_equal(read_rows(path, np.array([0, 2, n - 1])), want[[0, 2, n - 1]])
        # at most max_open shards stay mapped while every shard is read
        assert len(shards._maps) <= 1
    # an existing sample is complete (renamed into place): kept, not recomputed
    before = os.stat(tmp_path / "sample-6.npy").st_mtime_ns
    assert shards.write_sample(tmp_path / "sample-6.npy", keep, 6, seed=5) == (6, 4)
    assert os.stat(tmp_path / "sample-6.npy").st_mtime_ns == before


def _blobs(seed=0, n=600):
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(c, 0.1, size=(n, 4)) for c in (-3, 0, 3)]).astype(np.float32)[rng.permutation(3 * n)]


def test_chunked_kmeans_partial_fit_reads_chunks_and_is_reproducible(monkeypatch):
    from sklearn.cluster import MiniBatchKMeans

    x = _blobs()
    reads, fed = [], []
    real = MiniBatchKMeans.partial_fit

    def spy(self, X, *a, **k):
        fed.append(X.shape[0])
        return real(self, X, *a, **k)

    monkeypatch.setattr(MiniBatchKMeans, "partial_fit", spy)

    def read(rows):
        assert np.all(np.diff(rows) >= 0)  # sorted: sequential reads of the file
        reads.append(len(rows))
        return x[rows]

    cfg = KMeansConfig(n_clusters=3, n_init=3, batch_size=256, max_iter=5, max_no_improvement=1000, seed=0)
    centers, info = train_kmeans_chunks(read, len(x), cfg)
    # init: a validation draw + one draw per n_init, of init_size = 3 x batch rows; then one
    # partial_fit per chunk of at most batch rows, ceil(1800 / 256) = 8 chunks per pass
    assert reads[:4] == [768] * 4 and max(reads[4:]) == 256 and len(reads) == 4 + 5 * 8
    assert fed == reads[4:] and info["steps"] == 40 and not info["early_stop"]
    assert sum(reads[4:12]) == len(x)  # a pass reads every row once
    assert sorted(np.round(centers[:, 0]).tolist()) == [-3, 0, 3]
    # same seed, same centres; they agree with MiniBatchKMeans.fit on the whole array
    again, _ = train_kmeans_chunks(lambda rows: x[rows], len(x), cfg)
    np.testing.assert_array_equal(again, centers)
    fitted = train_kmeans(x, KMeansConfig(n_clusters=3, n_init=3, batch_size=256, max_frames=None, seed=0))
    np.testing.assert_allclose(np.sort(fitted[:, 0]), np.sort(centers[:, 0]), atol=0.05)
    # early stop as fit's: no improvement of the averaged chunk inertia for max_no_improvement chunks
    _, early = train_kmeans_chunks(lambda rows: x[rows], len(x), KMeansConfig(n_clusters=3, n_init=1, batch_size=256, max_iter=100, max_no_improvement=3))
    assert early["early_stop"] and early["steps"] < 800
    with pytest.raises(ValueError, match="5 frames for 8 clusters"):
        train_kmeans_chunks(lambda rows: x[rows], 5, KMeansConfig(n_clusters=8))


def _examples(n=10, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        T = int(rng.integers(40, 300))  # some shorter than the 128-frame crop
        out.append(np.stack([np.sin(np.arange(T) / (4 + k)), (rng.random(T) > 0.3)]).astype(np.float32))
    return out


def test_vqvae_dataloader_gives_the_in_memory_crops_and_the_same_model():
    ex = _examples()
    # the in-memory trainer's draw (before the DataLoader): per crop an example, then a start
    rng = np.random.default_rng(7)
    loader = torch.utils.data.DataLoader(CropDataset(LazySequence(len(ex), lambda i: ex[i]), 128),
                                         batch_sampler=CropBatchSampler([e.shape[1] for e in ex], 128, 4, 3, seed=7))
    for x, m in loader:
        assert x.shape == (4, 2, 128) and m.shape == (4, 128)
        for b in range(4):
            e = ex[rng.integers(len(ex))]
            T = e.shape[1]
            if T > 128:
                s = rng.integers(0, T - 128 + 1)
                np.testing.assert_array_equal(x[b].numpy(), e[:, s : s + 128])
                assert m[b].sum() == 128
            else:
                np.testing.assert_array_equal(x[b, :, :T].numpy(), e)
                assert (x[b, :, T:] == torch.from_numpy(e[:, -1:])).all() and m[b].sum() == T

    cfg = VQVAEConfig(channels=8, latent_dim=4, res_depth=1, codebook_size=8)
    tc = dict(steps=12, batch_size=4, crop_frames=128, log_every=6, checkpoint_every=0, seed=3)
    a, _ = train_vqvae(ex, cfg, VQVAETrainConfig(**tc))
    b, _ = train_vqvae(LazySequence(len(ex), lambda i: ex[i]), cfg, VQVAETrainConfig(**tc, num_workers=2),
                       lengths=[e.shape[1] for e in ex])
    c, _ = train_vqvae(ex, cfg, VQVAETrainConfig(**{**tc, "seed": 4}))
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    assert any(not torch.equal(v, c.state_dict()[k]) for k, v in a.state_dict().items())


def test_style_cnn_from_stored_logmels_equals_from_audio(tmp_path):
    rng = np.random.default_rng(0)
    wavs = [(0.1 * rng.standard_normal(int(SR * (0.6 + 0.2 * k)))).astype(np.float32) for k in range(6)]
    labels = ["a", "b"] * 3
    cfg = StyleConfig(n_mels=16, channels=8, layers=1, embed_dim=4)
    tcfg = StyleTrainConfig(steps=6, batch_size=4, crop_frames=40, log_every=3)
    shards = FrameShards(tmp_path / "mels", len(wavs), shard_items=4, max_open=1)
    shards.build(lambda idx: (cnn_logmels(cfg, [wavs[i] for i in idx]), {}))
    np.testing.assert_array_equal(shards[5], cnn_logmels(cfg, wavs)[5])  # batching does not change a frame
    a, log_a = train_style_cnn(wavs, labels, StyleConfig(**{**cfg.__dict__, "labels": []}), tcfg)
    b, log_b = train_style_cnn(None, labels, StyleConfig(**{**cfg.__dict__, "labels": []}), StyleTrainConfig(**{**tcfg.__dict__, "num_workers": 1}), mels=shards)
    assert [r["loss"] for r in log_a] == [r["loss"] for r in log_b]
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    # the feature statistics are those of all training frames
    allm = np.concatenate(cnn_logmels(cfg, wavs)).astype(np.float64)
    np.testing.assert_allclose(a.feat_mean.numpy(), allm.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a.feat_std.numpy(), allm.std(0, ddof=1), rtol=1e-4)


def test_speaker_f0_statistics_stream_one_utterance_at_a_time():
    from spiritlm.tokenizers.f0 import compute_speaker_stats, meta_speaker_stats

    rng = np.random.default_rng(0)
    utts = [(f"s{k % 3}", np.where(rng.random(200) > 0.4, rng.uniform(80 + 60 * (k % 3), 200 + 60 * (k % 3), 200), 0.0)) for k in range(30)]
    utts.append(("quiet", np.zeros(50)))
    st = compute_speaker_stats(iter(utts))  # a generator: read once, in order
    voiced = {s: np.concatenate([f[f > 0] for sp, f in utts if sp == s]) for s in ("s0", "s1", "s2")}
    logs = {s: np.log(v) for s, v in voiced.items()}
    assert set(st.speakers) == {"s0", "s1", "s2"}
    for s, v in logs.items():
        assert st.speakers[s]["mean"] == pytest.approx(v.mean(), rel=1e-12) and st.speakers[s]["std"] == pytest.approx(v.std(), rel=1e-10)
        assert st.speakers[s]["frames"] == len(v)
    allv = np.concatenate(list(logs.values()))
    assert st.global_mean == pytest.approx(allv.mean(), rel=1e-12)
    assert st.global_std == pytest.approx(np.concatenate([v - v.mean() for v in logs.values()]).std(), rel=1e-10)
    meta = meta_speaker_stats(iter(utts))
    assert set(meta) == {"s0", "s1", "s2"}
    for s, v in voiced.items():
        assert meta[s]["f0_mean"] == pytest.approx(v.mean(), rel=1e-12) and meta[s]["f0_std"] == pytest.approx(v.std(), rel=1e-10)
        assert meta[s]["logf0_std"] == pytest.approx(np.log(v).std(), rel=1e-10)


def test_training_items_keep_alignments_only_where_evaluated(tmp_path):
    from spiritlm.corpus.manifest import ManifestError
    from spiritlm.tokenizers.train import _read_items

    phones = [{"phone": "a", "start": 0.0, "end": 0.1}]
    words = [{"word": "a", "start": 0.0, "end": 0.1}]
    rows = [{"id": f"u{k}", "audio": f"u{k}.wav", "split": ("train", "test", "valid")[k % 3], "speaker": "s", "style": "calm",
             "text": "a", "words": words, "phones": phones} for k in range(7)]
    man = tmp_path / "m.jsonl"
    man.write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = _read_items(str(man), None)
    assert [it.id for it in items] == [f"u{k}" for k in range(7)]
    for it in items:
        kept = it.split == "test"
        assert (it.phones is not None) == kept and bool(it.words) == kept and (it.text is not None) == kept
        assert it.speaker == "s" and it.style == "calm" and os.path.isabs(it.audio)
    # only the first utterances count: u0 alone is evaluated on itself
    assert [it.phones is not None for it in _read_items(str(man), 1)] == [True]
    # no test split: valid is evaluated
    man.write_text("".join(json.dumps(r) + "\n" for r in rows if r["split"] != "test"))
    assert [(it.split, it.phones is not None) for it in _read_items(str(man), None)] == [("train", False), ("valid", True)] * 2 + [("train", False)]
    # no evaluation split at all: the training utterances are evaluated, nothing dropped
    man.write_text("".join(json.dumps({**r, "split": "train"}) + "\n" for r in rows[:2]))
    assert all(it.phones is not None for it in _read_items(str(man), None))
    man.write_text("".join(json.dumps(r) + "\n" for r in rows[:2] + rows[:1]))
    with pytest.raises(ManifestError, match="duplicate id 'u0'"):
        _read_items(str(man), 1)


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


def test_training_streams_through_shards_and_resumes(corpus, tmp_path, caplog, capsys):
    work = tmp_path / "work"
    caplog.set_level(logging.INFO, logger="spiritlm")
    m1 = train_tokenizer(str(corpus), str(tmp_path / "tok1"), _preset(), seed=0, threads=1, work_dir=str(work))
    first = [r.getMessage() for r in caplog.records]
    assert any("skipping bad" in ln for ln in first) and m1["num_train_utts"] == 6
    names = sorted(os.listdir(work))
    assert names[:3] == ["f0", "features", "plan.json"] and names[3].startswith("style-")
    assert sum(n.startswith("style-mels-") for n in names) == 1 and sum(n.startswith("style-sample-") for n in names) == 1
    assert sum(n.startswith("units-sample-") and n.endswith(".npy") for n in names) == 1
    assert any("k-means on 100 frames" in ln and "partial_fit in chunks" in ln for ln in first)  # --max_frames bounds the sample
    assert not any("resumed" in ln for ln in first)

    caplog.clear()
    m2 = train_tokenizer(str(corpus), str(tmp_path / "tok2"), _preset(), seed=0, threads=1, work_dir=str(work))
    second = [r.getMessage() for r in caplog.records]
    resumed = [ln for ln in second if "shards resumed" in ln]
    assert len(resumed) == 4  # features, F0, style log-mels, style embeddings: nothing recomputed
    assert sum("sample resumed" in ln for ln in second) == 2  # the k-means samples too
    for key in ("pnmi", "f0_rmse_cents", "vuv_error", "codebook_perplexity", "style_purity"):
        if key in m1:
            assert m1[key] == m2[key], key
    assert m1.get("f0_rmse_cents") is not None

    # shards of another corpus are refused, with the way out
    other = tmp_path / "other.jsonl"
    other.write_text("".join(ln for ln in corpus.read_text().splitlines(True)[:4]))
    with pytest.raises(UserError, match=r"shards of an unfinished run with other settings \(--manifest; --manifest / --max_utts.*--overwrite true"):
        train_tokenizer(str(other), str(tmp_path / "tok3"), _preset(), seed=0, threads=1, work_dir=str(work))

    # the CLI refuses a negative --num_workers before any work: the flag's type (NonNegativeInt) says so
    from spiritlm.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["tokenizer", "train", "--manifest", str(corpus), "--out", str(tmp_path / "tok5"), "--num_workers", "-1"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "spiritlm tokenizer train: error: --num_workers must be >= 0, got -1 (--num_workers)"]
    assert not (tmp_path / "tok5").exists()

    # without a work_dir the shards live in OUT/work and are removed after success
    train_tokenizer(str(corpus), str(tmp_path / "tok4"), _preset(), seed=0, threads=1)
    assert not (tmp_path / "tok4" / "work").exists() and (tmp_path / "tok4" / "metrics.json").exists()
