"""spiritlm corpus align (issue 16): text normalisation, forced alignment against an oracle whose
emissions are exact, sharded/resumable runs, rejects, and the CLI over a CTC judge folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from spiritlm.cli import main
from spiritlm.corpus.align import align_emission, align_manifest, long_emission, spell_words
from spiritlm.corpus.manifest import Utterance, read_manifest, write_manifest

from fixtures import HOP, SR, ToneCtc, tone_speech  # noqa: E402


def test_spell_words_normalises_for_the_alphabet():
    m = ToneCtc(star=True)
    spelled = spell_words("Café, 3rd -- naïve 1984 Straße!", m)
    assert [w.word for w in spelled] == ["Café,", "3rd", "--", "naïve", "1984", "Straße!"]
    decode = ["".join(m.labels[t] for t in w.tokens) for w in spelled]
    assert decode[0] == "cafe" and decode[1] == "third" and decode[2] == "" and decode[3] == "naive"
    assert decode[4] == "onethousandninehundredandeightyfour"
    assert decode[5] == "stra*e" and spelled[5].unknown == "ß"
    with pytest.raises(ValueError, match="word 'Straße': tone-oracle cannot spell 'ß' and has no star/unknown token"):
        spell_words("Straße", ToneCtc(star=False))


def test_alignment_recovers_exact_word_times():
    words = ["the", "cat", "sat", "on", "the", "mat", "today"]
    wav, truth = tone_speech(words, [0.0, 0.2, 0.0, 0.0, 0.5, 0.1])
    m = ToneCtc()
    times, score = align_emission(m.emissions([wav])[0], spell_words("The cat, sat on the MAT today.", m), m)
    assert [w.word for w in times] == ["The", "cat,", "sat", "on", "the", "MAT", "today."]
    assert [(w.start, w.end) for w in times] == [(pytest.approx(s), pytest.approx(e)) for _, s, e in truth]
    assert 0.9 < score <= 1.0 and all(0.9 < w.score <= 1.0 for w in times)
    # the same through windows of a long recording: seams do not move a word
    em = long_emission(m, wav, window_seconds=0.5, context_seconds=0.1)
    assert em.shape[0] == len(wav) // HOP
    again, _ = align_emission(em, spell_words("the cat sat on the mat today", m), m)
    assert [(w.start, w.end) for w in again] == [(w.start, w.end) for w in times]
    with pytest.raises(ValueError, match="transcript needs"):
        align_emission(m.emissions([wav[: 8 * HOP]])[0], spell_words("the cat sat", m), m)


def _manifest(tmp_path, texts: dict[str, str], audio: dict[str, np.ndarray]):
    utts = []
    for uid, text in texts.items():
        path = tmp_path / f"{uid}.wav"
        sf.write(path, audio[uid], SR, subtype="FLOAT")
        n = sf.info(path).frames
        utts.append(Utterance(uid, str(path), SR, n / SR, "spk", "neutral", text, [], split="train"))
    write_manifest(tmp_path / "in.jsonl", utts)
    return tmp_path / "in.jsonl"


def test_sharded_resumable_run_with_rejects(tmp_path):
    texts, audio = {}, {}
    rng = np.random.default_rng(0)
    for i in range(7):
        chars = [rng.choice(list("abcdefghij"))]
        while len(chars) < 14:  # no letter twice in a row (the oracle's tones would merge them)
            c = rng.choice(list("abcdefghij"))
            if c != chars[-1]:
                chars.append(c)
        cuts = sorted(rng.choice(np.arange(2, 13), size=3, replace=False))
        words = ["".join(chars[a:b]) for a, b in zip([0, *cuts], [*cuts, 14])]
        wav, _ = tone_speech(words, [0.1, 0.0, 0.3])
        texts[f"u{i}"], audio[f"u{i}"] = " ".join(words), wav
    texts["bad_spell"], audio["bad_spell"] = "abc ß", audio["u0"]  # a character the oracle cannot spell
    noisy = audio["u1"].copy()
    noisy[: len(noisy) // 2] = 0.0  # half its words are silent: they align with low probability
    texts["low"], audio["low"] = texts["u1"], noisy
    manifest = _manifest(tmp_path, texts, audio)
    out = str(tmp_path / "aligned.jsonl")
    m = ToneCtc()
    r0 = align_manifest(str(manifest), m, out, shard=0, num_shards=2, batch_size=3, min_score=0.5, progress=False)
    assert not r0.merged and not (tmp_path / "aligned.jsonl").exists()
    r1 = align_manifest(str(manifest), m, out, shard=1, num_shards=2, batch_size=2, min_score=0.5, progress=False)
    assert r1.merged
    got = read_manifest(out)
    assert [u.id for u in got] == [f"u{i}" for i in range(7)]  # manifest order, rejects left out
    for u in got:
        _, truth = tone_speech(u.text.split(), [0.1, 0.0, 0.3])
        assert [(w.word, w.start, w.end) for w in u.words] == [(a, pytest.approx(b), pytest.approx(c)) for a, b, c in truth]
        assert u.extra["align_score"] > 0.9 and len(u.extra["word_scores"]) == 4
    rejects = {r["id"]: r for r in map(json.loads, open(tmp_path / "aligned.rejects.jsonl"))}
    assert rejects["bad_spell"]["kind"] == "error" and "cannot spell 'ß'" in rejects["bad_spell"]["reason"]
    assert rejects["low"]["kind"] == "low_score" and rejects["low"]["score"] < 0.5
    assert not (tmp_path / "aligned.jsonl.parts").exists()


def test_resume_after_a_torn_line(tmp_path):
    texts, audio = {}, {}
    for i in range(4):
        wav, _ = tone_speech(["ab", "cd"], [0.1])
        texts[f"u{i}"], audio[f"u{i}"] = "ab cd", wav
    manifest = _manifest(tmp_path, texts, audio)
    out = str(tmp_path / "a.jsonl")
    parts = tmp_path / "a.jsonl.parts"
    parts.mkdir()
    first = Utterance("u0", str(tmp_path / "u0.wav"), SR, len(audio["u0"]) / SR, "spk", "neutral", "ab cd", [], split="train")
    (parts / "shard0-of-1.jsonl").write_text(json.dumps({**first.to_json(), "align_score": 1.0, "word_scores": []}) + "\n"
                                             + '{"id": "u1", "aud')  # a run killed mid-line
    r = align_manifest(str(manifest), ToneCtc(), out, progress=False)
    assert r.already_done == 1 and r.written == 3 and r.merged
    assert [u.id for u in read_manifest(out)] == ["u0", "u1", "u2", "u3"]


@pytest.fixture(scope="module")
def untrained_judge(tmp_path_factory):
    """A randomly initialised CTC judge folder: the CLI's plumbing, not alignment quality."""
    from spiritlm.judges.models import AsrConfig, AsrJudge, CtcAsr  # the judge's own writer

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("judge")
    AsrJudge(CtcAsr(AsrConfig(d_model=32, num_layers=1, num_heads=2, ffn_dim=64))).save(d)
    return d


def test_cli_over_a_judge_folder(tmp_path, capsys, untrained_judge):
    texts = {"a": "hello there", "b": "one 2 three", "c": "北京 hello", "d": ""}
    audio = {k: (0.1 * np.sin(np.arange(SR) / 5)).astype(np.float32) for k in texts}
    manifest = _manifest(tmp_path, texts, audio)
    out = tmp_path / "al.jsonl"
    argv = ["corpus", "align", "--manifest", manifest, "--aligner", untrained_judge, "--out", out, "--progress", "false",
            "--threads", "1"]
    with pytest.raises(SystemExit):
        main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert f"{manifest}:3 (c): word '北京': {untrained_judge} cannot spell '北'" in err
    assert f"{manifest}:4 (d): no transcript" in err
    assert err.strip().splitlines()[-1].startswith("spiritlm corpus align: error: 2 utterance(s) skipped")
    got = read_manifest(out)
    assert [u.id for u in got] == ["a", "b"]
    assert [w.word for w in got[1].words] == ["one", "2", "three"]  # the transcript's words, digits spelled for the model
    for u in got:
        assert all(0 <= w.start <= w.end <= u.duration for w in u.words)
        assert all(a.end <= b.start + 1e-9 for a, b in zip(u.words, u.words[1:]))
    main([str(a) for a in argv + ["--overwrite", "true", "--allow_skips", "true", "--min_score", "1.0"]])
    printed = capsys.readouterr().out
    assert "0 aligned, 2 below --min_score" in printed  # an untrained model is never that sure
    assert read_manifest(out) == []
    with pytest.raises(SystemExit):
        main(["corpus", "align", "--manifest", str(manifest), "--aligner", str(tmp_path), "--out", str(tmp_path / "x.jsonl")])
    assert "not an aligner" in capsys.readouterr().err


def test_mms_fa_offline_is_one_line(tmp_path, capsys, monkeypatch):
    import torchaudio.pipelines

    def offline(*a, **k):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(torchaudio.pipelines.MMS_FA, "get_model", offline)
    manifest = _manifest(tmp_path, {"a": "hi"}, {"a": np.zeros(SR, np.float32) + 0.01})
    with pytest.raises(SystemExit):
        main(["corpus", "align", "--manifest", str(manifest), "--aligner", "mms_fa", "--out", str(tmp_path / "o.jsonl")])
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot download the MMS_FA weights" in err


@pytest.mark.slow  # imports transformers' wav2vec 2.0 stack
def test_hugging_face_ctc_folder(tmp_path, capsys):
    """A (random, tiny) Wav2Vec2ForCTC folder with its processor: vocabulary, upper case, ``|`` and <unk>."""
    from transformers import Wav2Vec2Config, Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC

    from spiritlm.corpus.align import load_aligner

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4, **{c: 5 + i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZ'")}}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    d = tmp_path / "w2v"
    Wav2Vec2CTCTokenizer(str(tmp_path / "vocab.json"), word_delimiter_token="|").save_pretrained(d)
    Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True, return_attention_mask=True).save_pretrained(d)
    torch.manual_seed(0)
    cfg = Wav2Vec2Config(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                         conv_dim=(16, 16), conv_stride=(5, 64), conv_kernel=(10, 64), num_conv_pos_embeddings=16,
                         num_conv_pos_embedding_groups=2, pad_token_id=0)
    Wav2Vec2ForCTC(cfg).save_pretrained(d)
    m = load_aligner(str(d))
    assert (m.blank, m.sep, m.star, m.samples_per_frame) == (0, 4, 3, 320)
    spelled = spell_words("Don't 42 Ωmega", m)
    assert ["".join(m.labels[t] for t in w.tokens) for w in spelled] == ["DON'T", "FORTY|TWO", "<unk>MEGA"]
    texts = {"a": "don't stop", "b": "forty 2 go"}
    audio = {k: (0.1 * np.sin(np.arange(2 * SR) / (3 + i))).astype(np.float32) for i, k in enumerate(texts)}
    manifest = _manifest(tmp_path, texts, audio)
    main(["corpus", "align", "--manifest", str(manifest), "--aligner", str(d), "--out", str(tmp_path / "o.jsonl"),
          "--batch_size", "2", "--progress", "false"])
    got = read_manifest(tmp_path / "o.jsonl")
    assert [[w.word for w in u.words] for u in got] == [["don't", "stop"], ["forty", "2", "go"]]
    assert all(w.end <= u.duration for u in got for w in u.words)
