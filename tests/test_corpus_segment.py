"""spiritlm corpus segment (issue 16): long recordings cut at pauses into <= max_seconds utterances,
at word boundaries when words are known (or aligned in windows), at VAD pauses otherwise."""

from __future__ import annotations


import numpy as np
import pytest
import soundfile as sf
from fixtures import REAL_FLAC as REAL
from fixtures import SR, ToneCtc, tone_speech

from spiritlm.cli import main
from spiritlm.corpus.manifest import Utterance, Word, read_manifest, write_manifest
from spiritlm.corpus.segment import SegmentConfig, choose_cuts, segment_manifest


def _long_tone_recording(tmp_path, n_words: int = 160, seed: int = 0):
    rng = np.random.default_rng(seed)
    words = []
    while len(words) < n_words:
        w = "".join(rng.choice(list("abcdefghijklmnop"), size=rng.integers(2, 7)))
        if all(a != b for a, b in zip(w, w[1:])) and (not words or words[-1][-1] != w[0]):
            words.append(w)
    gaps = [float(rng.choice([0.0, 0.0, 0.05, 0.15, 0.4, 0.9])) for _ in words]
    wav, spans = tone_speech(words, gaps)
    path = tmp_path / "long.wav"
    sf.write(path, wav, SR, subtype="FLOAT")
    return path, wav, spans


def _check_segments(segs, spans, max_seconds):
    assert all(u.duration <= max_seconds + 1e-6 for u in segs)
    assert [w.word for u in segs for w in u.words] == [w for w, _, _ in spans]  # union = transcript, in order
    k = 0
    for u in segs:
        off = u.extra["segment_of"]["start"]
        for w in u.words:  # each word whole, at its own time
            assert w.start + off == pytest.approx(spans[k][1], abs=1e-4) and w.end + off == pytest.approx(spans[k][2], abs=1e-4)
            k += 1
        assert u.text == " ".join(w.word for w in u.words)
        assert sf.info(u.audio).frames == pytest.approx(u.duration * SR, abs=1)
    cuts = [u.extra["segment_of"]["start"] for u in segs[1:]]
    for c in cuts:  # no cut inside a word
        assert not any(s + 1e-6 < c < e - 1e-6 for _, s, e in spans), c


def test_choose_cuts_prefers_long_pauses_late_in_the_window():
    assert choose_cuts([(4, 5), (9, 9.2), (14, 16), (25, 25.1)], 30, 12) == [9.1, 15.0, 25.05]
    assert choose_cuts([(1, 2)], 30, 12) is None  # 18 s without a pause


def test_words_known_every_segment_keeps_whole_words(tmp_path):
    path, wav, spans = _long_tone_recording(tmp_path)
    dur = len(wav) / SR
    assert dur > 50
    utt = Utterance("long", str(path), SR, dur, "spk", "neutral", " ".join(w for w, _, _ in spans),
                    [Word(w, s, e) for w, s, e in spans], split="train")
    write_manifest(tmp_path / "in.jsonl", [utt])
    report = segment_manifest(str(tmp_path / "in.jsonl"), str(tmp_path / "seg" / "out.jsonl"), SegmentConfig(max_seconds=10))
    segs = read_manifest(tmp_path / "seg" / "out.jsonl")
    assert report.cut == 1 and report.segments == len(segs) >= dur / 10
    _check_segments(segs, spans, 10)


def test_transcript_aligned_in_windows_then_cut(tmp_path):
    path, wav, spans = _long_tone_recording(tmp_path, seed=1)
    text = " ".join(w for w, _, _ in spans)
    write_manifest(tmp_path / "in.jsonl", [Utterance("long", str(path), SR, len(wav) / SR, "spk", "neutral", text, [])])
    segment_manifest(str(tmp_path / "in.jsonl"), str(tmp_path / "out.jsonl"), SegmentConfig(max_seconds=12), aligner=ToneCtc())
    _check_segments(read_manifest(tmp_path / "out.jsonl"), spans, 12)


def test_energy_vad_cuts_only_in_pauses(tmp_path):
    path, wav, spans = _long_tone_recording(tmp_path, seed=2)
    write_manifest(tmp_path / "in.jsonl", [Utterance("long", str(path), SR, len(wav) / SR, "spk", "neutral", "", [])])
    report = segment_manifest(str(tmp_path / "in.jsonl"), str(tmp_path / "out.jsonl"), SegmentConfig(max_seconds=10, vad="energy"))
    segs = read_manifest(tmp_path / "out.jsonl")
    assert report.forced_cuts == 0 and len(segs) >= 7
    assert all(u.duration <= 10 and u.text == "" and u.words == [] for u in segs)
    for u in segs[1:]:
        c = u.extra["segment_of"]["start"]
        assert not any(s < c < e for _, s, e in spans), c
    assert sum(u.duration for u in segs) == pytest.approx(len(wav) / SR, abs=1e-3)


def test_silero_on_real_speech_and_the_cli(tmp_path, capsys):
    real, sr = sf.read(REAL, dtype="float32")
    wav = np.concatenate([np.concatenate([real, np.zeros(SR, np.float32)]) for _ in range(3)])
    path = tmp_path / "real3.wav"
    sf.write(path, wav, sr, subtype="PCM_16")
    lines = [Utterance("real3", str(path), sr, len(wav) / sr, "7143", "neutral", "", []),
             Utterance("text_no_words", str(path), sr, len(wav) / sr, "7143", "neutral", "some words", []),
             Utterance("short", str(REAL), sr, len(real) / sr, "7143", "neutral", "", [])]
    write_manifest(tmp_path / "in.jsonl", lines)
    argv = ["corpus", "segment", "--manifest", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "o.jsonl"), "--max_seconds", "12"]
    with pytest.raises(SystemExit):
        main(argv)
    err = capsys.readouterr().err
    assert f"{tmp_path / 'in.jsonl'}:2 (text_no_words): has a transcript but no word times: pass --aligner" in err
    assert err.strip().splitlines()[-1].startswith("spiritlm corpus segment: error: 1 recording(s) skipped")
    segs = read_manifest(tmp_path / "o.jsonl")
    assert segs[-1].id == "short" and segs[-1].audio == str(REAL)  # short ones are kept as they are
    cut = [u for u in segs if u.id.startswith("real3_")]
    assert len(cut) >= 3 and all(u.duration <= 12 for u in cut)
    rms = np.sqrt(np.convolve(wav ** 2, np.ones(320) / 320, mode="same"))
    for u in cut[1:]:  # silero cut in a pause: quiet around the cut
        c = int(u.extra["segment_of"]["start"] * sr)
        assert rms[c] < 0.05 * rms.max(), u.extra["segment_of"]


@pytest.mark.slow
def test_five_minutes_of_corpus_utterances(tmp_path):
    """A ~5-minute concatenation of synthetic corpus utterances with pauses: cut with the words,
    and with Silero VAD alone; no segment longer than max_seconds, no word cut."""
    from spiritlm.corpus.cli import synth

    synth(out=str(tmp_path / "c"), num_utts=110, seed=3, workers=2, progress=False)
    utts = read_manifest(tmp_path / "c" / "manifest.jsonl")
    rng = np.random.default_rng(0)
    pieces, spans, now = [], [], 0
    for u in utts:
        w, _ = sf.read(u.audio, dtype="float32")
        spans += [(x.word, now / SR + x.start, now / SR + x.end) for x in u.words]
        pause = np.zeros(int(rng.uniform(0.1, 0.8) * SR), np.float32)
        pieces += [w, pause]
        now += len(w) + len(pause)
    wav = np.concatenate(pieces)
    assert len(wav) / SR > 280
    path = tmp_path / "five.wav"
    sf.write(path, wav, SR, subtype="PCM_16")
    text = " ".join(w for w, _, _ in spans)
    write_manifest(tmp_path / "in.jsonl", [Utterance("five", str(path), SR, len(wav) / SR, "spk", "neutral", text,
                                                     [Word(w, round(s, 6), round(e, 6)) for w, s, e in spans])])
    segment_manifest(str(tmp_path / "in.jsonl"), str(tmp_path / "w" / "out.jsonl"), SegmentConfig(max_seconds=30), progress=False)
    _check_segments(read_manifest(tmp_path / "w" / "out.jsonl"), spans, 30)
    write_manifest(tmp_path / "v.jsonl", [Utterance("five", str(path), SR, len(wav) / SR, "spk", "neutral", "", [])])
    report = segment_manifest(str(tmp_path / "v.jsonl"), str(tmp_path / "v" / "out.jsonl"), SegmentConfig(max_seconds=30), progress=False)
    segs = read_manifest(tmp_path / "v" / "out.jsonl")
    assert report.forced_cuts == 0 and all(u.duration <= 30 for u in segs)
    for u in segs[1:]:
        c = u.extra["segment_of"]["start"]
        assert not any(s + 0.01 < c < e - 0.01 for _, s, e in spans), c
