"""The synthetic corpus: espeak binding, text generators, `spiritlm corpus synth` end to end."""

from __future__ import annotations

import json
import os
import random
import shutil
from collections import Counter

import numpy as np
import pytest
import soundfile as sf

from spiritlm.corpus import text_sources
from spiritlm.corpus.espeak import Espeak, EspeakError, Voice, custom_data_dir, split_phones
from spiritlm.corpus.manifest import check_manifest, read_manifest
from spiritlm.corpus.synth import STYLES, SPEAKERS, SynthConfig, synthesize_corpus, whisper_variants

NUM_UTTS = 32


# ------------------------------------------------------------------------------------------------
# Fixtures: one engine and three small corpora for the whole module
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def engine() -> Espeak:
    return Espeak(data_path=custom_data_dir(whisper_variants()))


def _synth(folder, seed=0, workers=2, num_utts=NUM_UTTS):
    cfg = SynthConfig(num_utts=num_utts, seed=seed, workers=workers, progress=False)
    return synthesize_corpus(cfg, str(folder))


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return {
        "a": _synth(root / "a", seed=0, workers=2),
        "b": _synth(root / "b", seed=0, workers=1),  # same seed, other worker count
        "c": _synth(root / "c", seed=1, workers=2, num_utts=12),
    }


def _files(folder) -> dict[str, bytes]:
    out = {}
    for dirpath, _, names in os.walk(folder):
        for n in names:
            p = os.path.join(dirpath, n)
            out[os.path.relpath(p, folder)] = open(p, "rb").read()
    return out


# ------------------------------------------------------------------------------------------------
# Determinism
# ------------------------------------------------------------------------------------------------
def test_same_seed_gives_identical_bytes_whatever_the_worker_count(corpora):
    a, b = _files(corpora["a"].out_dir), _files(corpora["b"].out_dir)
    assert set(a) == set(b)
    assert len([f for f in a if f.endswith(".wav")]) == NUM_UTTS
    differing = [f for f in a if a[f] != b[f]]
    assert differing == ["synth_report.json"]  # timing only
    assert corpora["a"].report["workers"] == 2 and corpora["b"].report["workers"] == 1


def test_a_rerun_is_identical_and_a_new_seed_differs(corpora, tmp_path):
    again = _synth(tmp_path / "again", seed=0, workers=2)
    a, r = _files(corpora["a"].out_dir), _files(again.out_dir)
    assert all(a[f] == r[f] for f in a if f != "synth_report.json")
    c = corpora["c"]
    texts_a = {u.text for u in corpora["a"].utterances}
    assert not texts_a & {u.text for u in c.utterances}
    wav_a = open(os.path.join(corpora["a"].out_dir, "wavs", "utt000000.wav"), "rb").read()
    wav_c = open(os.path.join(c.out_dir, "wavs", "utt000000.wav"), "rb").read()
    assert wav_a != wav_c


def test_output_folder_is_not_silently_overwritten(corpora, tmp_path):
    target = tmp_path / "x"
    shutil.copytree(corpora["c"].out_dir, target)
    with pytest.raises(FileExistsError, match="overwrite"):
        synthesize_corpus(SynthConfig(num_utts=2, progress=False), str(target))
    res = synthesize_corpus(SynthConfig(num_utts=2, progress=False), str(target), overwrite=True)
    assert sorted(os.listdir(target / "wavs")) == ["utt000000.wav", "utt000001.wav"]
    assert len(res.utterances) == 2


# ------------------------------------------------------------------------------------------------
# Manifest content
# ------------------------------------------------------------------------------------------------
def test_manifest_validates_and_has_the_documented_keys(corpora):
    res = corpora["a"]
    report = check_manifest(res.manifest, expected_sample_rate=16000)
    assert report.ok, [str(p) for p in report.problems]
    lines = [json.loads(line) for line in open(res.manifest, encoding="utf-8")]
    base = ["id", "audio", "sample_rate", "duration", "speaker", "style", "text", "words", "phones"]
    for d in lines:
        assert list(d)[: len(base)] == base
        assert d["audio"] == f"wavs/{d['id']}.wav"
        assert d["source"] in text_sources.SOURCES and d["split"] in ("train", "valid", "test")
        assert ("sentiment" in d) == (d["source"] == "sentiment")
        assert ("intent" in d) == (d["source"] == "intent") == ("slots" in d)
        assert set(d) <= set(base) | {"sentiment", "intent", "slots", "split", "source"}
    utts = read_manifest(res.manifest)
    for u in utts:
        info = sf.info(u.audio)
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert u.duration == info.frames / 16000
        assert u.text == " ".join(w.word for w in u.words)


def test_alignment_is_ordered_inside_the_audio_and_silence_is_outside_words(corpora):
    for u in read_manifest(corpora["a"].manifest):
        x, sr = sf.read(u.audio)
        assert u.words[0].start >= 0.09  # the planned leading silence (>= 0.1 s) is kept
        assert u.duration - u.words[-1].end >= 0.09  # and the trailing one
        for w in u.words:
            assert w.end > w.start
        for a, b in zip(u.words, u.words[1:]):
            assert b.start >= a.end
        for p in u.phones:
            assert p.end >= p.start
            assert any(w.start <= p.start and p.end <= w.end for w in u.words), (u.id, p)
        # Every word has at least one phone, and phones cover most of their word.
        for w in u.words:
            inside = [p for p in u.phones if w.start <= p.start and p.end <= w.end]
            assert inside and sum(p.end - p.start for p in inside) >= 0.7 * (w.end - w.start), (u.id, w)
        # Outside the words there is only the silence we added (and the echo tail of a voice).
        mask = np.zeros(len(x), bool)
        for w in u.words:
            mask[int(w.start * sr) : int(np.ceil(w.end * sr))] = True
        assert np.sqrt(np.mean(x[~mask] ** 2)) < 0.1 * np.sqrt(np.mean(x[mask] ** 2))
        # Silence between sentences falls between words (text of several sentences).
        gaps = [b.start - a.end for a, b in zip(u.words, u.words[1:])]
        assert max(gaps, default=0.0) < 0.7


def test_labels_speakers_and_styles_are_covered(corpora):
    res = corpora["a"]
    utts = res.utterances
    speakers = Counter(u.speaker for u in utts)
    assert set(speakers) == {s.name for s in SPEAKERS[:4]} and min(speakers.values()) == NUM_UTTS // 4
    styles = Counter(u.style for u in utts)
    assert set(styles) == set(STYLES) and min(styles.values()) >= 2, styles
    sources = Counter(u.extra["source"] for u in utts)
    # Exact counts for 0.3 / 0.3 / 0.4 of 32 by largest remainder: 9.6, 9.6, 12.8.
    assert sources == {"sentiment": 10, "intent": 9, "narrative": 13}
    splits = Counter(u.split for u in utts)
    assert splits["train"] > splits["valid"] >= 1 and splits["test"] >= 1
    for u in utts:
        if u.sentiment:
            assert u.sentiment in text_sources.SENTIMENTS
        if u.intent:
            assert u.intent in text_sources.INTENTS and isinstance(u.extra["slots"], dict)
    stats = json.load(open(os.path.join(res.out_dir, "stats.json")))
    assert stats["num_utts"] == NUM_UTTS and stats["speakers"] == dict(sorted(speakers.items()))
    assert stats["vocab_size"] == len({w.word for u in utts for w in u.words})
    assert stats["hours"] == pytest.approx(sum(u.duration for u in utts) / 3600, abs=1e-4)
    report = json.load(open(os.path.join(res.out_dir, "synth_report.json")))
    assert report["throughput_x_realtime"] > 0


def test_check_catches_a_deleted_wav_in_a_real_corpus(corpora, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(corpora["c"].out_dir, target)
    os.remove(target / "wavs" / "utt000003.wav")
    report = check_manifest(target / "manifest.jsonl")
    assert report.bad_lines == [4] and report.problems[0].id == "utt000003"


# ------------------------------------------------------------------------------------------------
# Acoustics of the styles
# ------------------------------------------------------------------------------------------------
def _f0(x: np.ndarray, sr: int, frame: float = 0.04, hop: float = 0.01) -> np.ndarray:
    """Autocorrelation F0 per frame, 0 where unvoiced (peak below 0.5)."""
    n, h = int(frame * sr), int(hop * sr)
    lo, hi = int(sr / 450), int(sr / 60)
    out = []
    for s in range(0, len(x) - n, h):
        seg = x[s : s + n] - x[s : s + n].mean()
        energy = float(np.dot(seg, seg))
        if energy < 1e-6 * n:
            out.append(0.0)
            continue
        ac = np.correlate(seg, seg, "full")[n - 1 :] / energy
        k = lo + int(np.argmax(ac[lo:hi]))
        out.append(sr / k if ac[k] > 0.5 else 0.0)
    return np.array(out)


def test_styles_are_acoustically_distinct(engine):
    words = "the old sailor walked slowly along the harbor and found a small red boat".split()
    for speaker in SPEAKERS[:2]:  # one male, one female voice
        feats = {}
        for name, st in STYLES.items():
            mid = lambda r: (r[0] + r[1]) // 2  # noqa: E731
            variant = speaker.whisper_variant if st.whisper else speaker.variant
            voice = Voice(f"{speaker.language}+{variant}", mid(st.rate), mid(st.volume), mid(st.pitch), mid(st.pitch_range))
            s = engine.synthesize(words, voice)
            x = s.samples.astype(np.float64) / 32768
            f0 = _f0(x, s.sample_rate)
            voiced = f0 > 0
            feats[name] = dict(
                f0=float(np.median(f0[voiced])) if voiced.any() else 0.0,
                voiced=float(voiced.mean()),
                rms=float(np.sqrt(np.mean(x**2))),
                dur=s.duration,
            )
        f = feats
        assert f["happy"]["f0"] > 1.15 * f["neutral"]["f0"], f
        assert f["sad"]["f0"] < 0.95 * f["neutral"]["f0"], f
        assert f["sad"]["rms"] < 0.75 * f["neutral"]["rms"] < 0.75 * f["happy"]["rms"], f
        assert f["sad"]["dur"] > 1.15 * f["neutral"]["dur"] > 1.15 * f["happy"]["dur"], f
        assert f["whisper"]["voiced"] < 0.15 < f["neutral"]["voiced"], f


def test_whispered_voices_keep_the_speaker(engine):
    words = "please call my mother tonight".split()
    outs = [engine.synthesize(words, Voice(f"{s.language}+{s.whisper_variant}")).samples for s in SPEAKERS[:4]]
    assert len({o.tobytes() for o in outs}) == 4


# ------------------------------------------------------------------------------------------------
# The espeak binding
# ------------------------------------------------------------------------------------------------
def test_engine_is_deterministic_despite_hidden_state(engine):
    words = "the quick brown fox jumps over the lazy dog".split()
    v = Voice("en-us+f2")
    first = engine.synthesize(words, v, rand_seed=3)
    engine.synthesize("something else entirely".split(), Voice("en-us+m3", rate=300))
    second = engine.synthesize(words, v, rand_seed=3)
    assert first.samples.tobytes() == second.samples.tobytes()
    assert first.words == second.words and first.phones == second.phones
    assert not engine.used_in_process  # the parent never rendered: every child starts pristine


def test_word_times_are_sane(engine):
    words = "what is the weather in paris then it sleeps quietly".split()
    s = engine.synthesize(words, Voice("en-us"), "?")
    assert [w.label for w in s.words] == words
    assert s.words[0].start < 0.02 * s.sample_rate
    assert s.duration * s.sample_rate - s.words[-1].end < 0.03 * s.sample_rate  # ends near the audio end
    for w in s.words:
        assert 0.04 * s.sample_rate < w.end - w.start < 0.8 * s.sample_rate
    # Vowel-initial words start at their vowel, not at espeak's early WORD event.
    it = s.words[words.index("it")]
    assert [p.label for p in s.phones if p.word_index == words.index("it")][0] == "ɪ"
    assert it.start == [p.start for p in s.phones if p.word_index == words.index("it")][0]


def test_multiword_dictionary_entries_are_split(engine):
    # espeak reads "that the" and "there are" as single dictionary entries.
    s = engine.synthesize("i saw that the cat ran and there are two".split(), Voice("en-us"))
    by_word = [[p.label for p in s.phones if p.word_index == k] for k in range(len(s.words))]
    assert by_word[2] == ["ð", "æ", "t"] and by_word[3] == ["ð", "ə"]
    assert by_word[7][0] == "ð" and by_word[8] == ["ɑːɹ"]
    assert split_phones(["f", "ɚ", "ɹ", "ə"], [["f", "ɔːɹ"], ["ɐ"]]) == [3, 1]


def test_bad_inputs_raise_clear_errors(engine):
    with pytest.raises(ValueError, match="alphabetic"):
        engine.synthesize(["route", "66"], Voice())
    with pytest.raises(ValueError, match="rate"):
        Voice(rate=1000)
    with pytest.raises(EspeakError, match="not found"):
        engine.synthesize(["hello"], Voice("xx-nonexistent"))


def test_espeak_reads_every_vocabulary_word(engine):
    vocab = sorted(text_sources.vocabulary())
    assert len(vocab) >= 1000
    for i in range(0, len(vocab), 25):
        chunk = vocab[i : i + 25]
        s = engine.synthesize(chunk, Voice("en-us"))
        assert [w.label for w in s.words] == chunk
        assert all(any(p.word_index == k for p in s.phones) for k in range(len(chunk)))


# ------------------------------------------------------------------------------------------------
# Text sources
# ------------------------------------------------------------------------------------------------
def test_text_generators_are_deterministic_and_well_formed():
    vocab = text_sources.vocabulary()
    for source in text_sources.SOURCES:
        a = [text_sources.generate(source, random.Random(5)).text for _ in range(3)]
        assert len(set(a)) == 1
        rng = random.Random(11)
        items = [text_sources.generate(source, rng) for _ in range(400)]
        assert len({i.text for i in items}) > 250  # varied
        for item in items:
            assert item.source == source
            assert all(w.isalpha() and w.islower() for w in item.words), item.words
            assert set(item.words) <= vocab
            assert all(term in ".?!" for _, term in item.sentences)
    rng = random.Random(0)
    labels = Counter(text_sources.sentiment_item(rng).sentiment for _ in range(300))
    assert set(labels) == set(text_sources.SENTIMENTS)
    intents = Counter(text_sources.intent_item(rng).intent for _ in range(600))
    assert set(intents) == set(text_sources.INTENTS) and len(intents) >= 8
    item = text_sources.intent_item(random.Random(1), "set_alarm")
    assert item.intent == "set_alarm" and "time" in item.slots and item.slots["time"] in item.text
    with pytest.raises(ValueError, match="unknown"):
        text_sources.generate("poetry", rng)


def test_config_validation():
    for bad in (
        dict(num_utts=0),
        dict(mix={"songs": 1.0}),
        dict(splits={"train": 0.0}),
        dict(num_speakers=9),
        dict(styles=("angry",)),
        dict(sample_rate=100),
    ):
        with pytest.raises(ValueError):
            SynthConfig(**bad).validate()
