"""Word-level interleaving: span bounds, time ranges, dedup after slicing, determinism, skips."""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spiritlm.formats import SPEECH_MARKER, SPEECH_TOKEN_RE, TEXT_MARKER, split_modalities, units_to_string
from spiritlm.interleave import (
    InterleaveConfig,
    SkipDocument,
    check_units,
    draw_spans,
    group_utterances,
    interleaved_document,
    make_documents,
    make_group_documents,
    slice_speech,
    speech_document,
    text_document,
    utterance_rng,
)

from spiritlm.units_jsonl import read_units  # noqa: E402

META_UNITS = Path(__file__).parent / "data" / "meta_7143-88743-0029_units.json"


@dataclass
class W:
    word: str
    start: float
    end: float


@dataclass
class U:
    id: str
    duration: float
    text: str
    words: list = field(default_factory=list)
    audio: str | None = None


def make_utt(n_words: int, seed: int = 0, uid: str = "u0") -> U:
    rng = random.Random(seed)
    t = rng.uniform(0.0, 0.3)
    words = []
    for i in range(n_words):
        d = rng.uniform(0.1, 0.4)
        words.append(W(f"w{i}", round(t, 3), round(t + d, 3)))
        t += d + rng.choice([0.0, 0.0, 0.04, 0.3])
    dur = round(t + 0.2, 3)
    return U(uid, dur, " ".join(w.word for w in words), words)


def index_units(utt: U) -> dict[str, str]:
    """Units whose value is the frame index: a token's value tells its frame (all distinct).

    (Interleaving does not check values against a vocabulary, so indices may exceed 500.)
    """
    nh = int(utt.duration * 25)
    npi = int(utt.duration * 12.5)
    ns = math.ceil(utt.duration)
    return {
        "hubert": " ".join(str(i) for i in range(nh)),
        "pitch": " ".join(str(i) for i in range(npi)),
        "style": " ".join(str(i) for i in range(ns)),
    }


RATES = {"Hu": 25.0, "Pi": 12.5, "St": 1.0}
ORDER = {"Hu": 24.99, "Pi": 12.5, "St": 1.0}


@settings(max_examples=80, deadline=None)
@given(
    n_words=st.integers(1, 60),
    seed=st.integers(0, 10_000),
    tmin=st.integers(1, 12),
    tspan=st.integers(0, 10),
    smin=st.integers(1, 8),
    sspan=st.integers(0, 8),
)
def test_span_bounds_and_markers(n_words, seed, tmin, tspan, smin, sspan):
    cfg = InterleaveConfig(text_span_min=tmin, text_span_max=tmin + tspan, speech_span_min=smin, speech_span_max=smin + sspan)
    spans = draw_spans(n_words, cfg, random.Random(seed))
    assert spans[0][1] == 0 and spans[-1][2] == n_words
    for (m0, _, e0), (m1, s1, _) in zip(spans, spans[1:]):
        assert e0 == s1 and m0 != m1  # contiguous and alternating
    for k, (m, a, b) in enumerate(spans):
        lo, hi = cfg.span_bounds(m)
        assert b - a <= hi
        if k < len(spans) - 1:
            assert b - a >= lo


@settings(max_examples=40, deadline=None)
@given(n_words=st.integers(7, 45), seed=st.integers(0, 10_000), expressive=st.booleans())
def test_speech_tokens_come_from_their_words_time_range(n_words, seed, expressive):
    utt = make_utt(n_words, seed)
    cfg = InterleaveConfig(text_span_min=2, text_span_max=6, speech_span_min=2, speech_span_max=6, expressive=expressive)
    doc = interleaved_document(utt, index_units(utt), cfg, random.Random(seed))
    segs = split_modalities(doc.text)
    assert [s.modality for s in segs] == [s.modality for s in doc.spans]
    assert doc.text.count(TEXT_MARKER) + doc.text.count(SPEECH_MARKER) == len(doc.spans)
    words = utt.words
    for span, seg in zip(doc.spans, segs):
        if span.modality == "text":
            assert seg.text == " ".join(w.word for w in words[span.first_word : span.end_word])
            continue
        # the documented range: first word's start .. next word's start (or last word's end)
        assert span.start == words[span.first_word].start
        nxt = span.end_word
        assert span.end == (words[nxt].start if nxt < len(words) else words[nxt - 1].end)
        seen = {"Hu": [], "Pi": [], "St": []}
        times = []
        for m in SPEECH_TOKEN_RE.finditer(seg.render()):
            kind, i = m.group(1), int(m.group(2))
            assert span.start - 1e-9 <= i / RATES[kind] < span.end + 1e-9, (kind, i, span)
            seen[kind].append(i)
            times.append(i / ORDER[kind])
        assert times == sorted(times)  # merged in time order
        # and every frame of the range is there (index units never repeat, so nothing deduplicates)
        for kind, rate in RATES.items():
            if kind != "Hu" and not expressive:
                assert not seen[kind]
                continue
            expected = [i for i in range(10_000) if span.start - 1e-9 <= i / rate < span.end - 1e-9]
            n_frames = {"Hu": int(utt.duration * 25), "Pi": int(utt.duration * 12.5), "St": math.ceil(utt.duration)}[kind]
            assert seen[kind] == [i for i in expected if i < n_frames]


def test_dedup_after_slicing():
    utt = U("u", 2.0, "a b", [W("a", 0.0, 1.0), W("b", 1.0, 2.0)])
    units = {"hubert": " ".join(["7"] * 50)}  # one run across the cut
    cfg = InterleaveConfig()
    streams = check_units(utt, units, cfg)
    assert slice_speech(streams, 0.0, 1.0, cfg) == "[Hu7]"
    assert slice_speech(streams, 1.0, 2.0, cfg) == "[Hu7]"  # kept: dedup happens after slicing
    assert slice_speech(streams, 0.0, 2.0, cfg) == "[Hu7]"


def test_whole_span_equals_units_to_string():
    data = json.loads(META_UNITS.read_text())
    units = data["units"]
    n = len(units["hubert"].split())
    utt = U("meta", n / 25.0, "x", [W("x", 0.0, n / 25.0)])
    for expressive in (False, True):
        cfg = InterleaveConfig(expressive=expressive)
        streams = check_units(utt, units, cfg)
        got = slice_speech(streams, 0.0, 100.0, cfg)
        assert got == units_to_string(units, has_pitch=expressive, has_style=expressive)
        assert got == data["expressive_string" if expressive else "base_string"]
        assert speech_document(utt, units, cfg).text == SPEECH_MARKER + got


def test_documents_are_deterministic():
    utt = make_utt(60, 3)
    units = index_units(utt)
    cfg = InterleaveConfig()
    a, _ = make_documents(utt, units, cfg, seed=5)
    b, _ = make_documents(utt, units, cfg, seed=5)
    assert [d.text for d in a] == [d.text for d in b]
    texts = {make_documents(utt, units, cfg, seed=s)[0][2].text for s in range(10)}
    assert len(texts) > 1  # the seed matters
    r1, r2 = utterance_rng(5, "u0"), utterance_rng(5, "u0")
    assert r1.random() == r2.random()


def test_default_config_on_long_utterance():
    utt = make_utt(200, 1)
    doc = interleaved_document(utt, index_units(utt) | {"hubert": " ".join(["1"] * int(utt.duration * 25))}, InterleaveConfig(), random.Random(0))
    for k, s in enumerate(doc.spans):
        lo, hi = (10, 30) if s.modality == "text" else (5, 15)
        assert s.num_words <= hi and (s.num_words >= lo or k == len(doc.spans) - 1)


def test_text_and_speech_documents():
    utt = make_utt(5, 0)
    assert text_document(utt).text == TEXT_MARKER + utt.text
    assert speech_document(utt, index_units(utt), InterleaveConfig()).text.startswith("[Speech][Hu0][Hu1]")
    with pytest.raises(SkipDocument) as e:
        text_document(U("e", 1.0, "  "))
    assert e.value.reason == "empty_text"


def _reasons(utt, units, cfg=InterleaveConfig(text_span_min=1, text_span_max=2, speech_span_min=1, speech_span_max=2)):
    return dict(make_documents(utt, units, cfg)[1])


def test_skip_reasons():
    utt = make_utt(10, 0)
    good = index_units(utt)
    assert _reasons(utt, good) == {}
    assert _reasons(utt, None) == {"speech": "missing_units", "interleaved": "missing_units"}
    short = {"hubert": " ".join(good["hubert"].split()[:-10])}
    assert _reasons(utt, short) == {"speech": "unit_count_mismatch", "interleaved": "unit_count_mismatch"}
    expressive = InterleaveConfig(expressive=True)
    assert _reasons(utt, {"hubert": good["hubert"]}, expressive)["speech"] == "missing_stream"
    bad = U(utt.id, utt.duration, utt.text, list(utt.words))
    bad.words[-1] = W("z", bad.words[-1].start, utt.duration + 0.5)
    assert _reasons(bad, good) == {"interleaved": "word_outside_audio"}
    back = U(utt.id, utt.duration, utt.text, list(utt.words))
    back.words[3] = W("z", 0.5, 0.4)
    assert _reasons(back, good) == {"interleaved": "bad_word_times"}
    assert _reasons(U("n", 1.0, "hi", []), {"hubert": " ".join(["1"] * 25)}) == {"interleaved": "no_words"}
    one = U("one", 1.0, "hi", [W("hi", 0.1, 0.5)])
    assert _reasons(one, {"hubert": " ".join(["1"] * 25)}) == {"interleaved": "too_short_to_interleave"}


def test_tolerance_follows_meta_frame_counts():
    # Meta's tokenizer on 9.135 s of audio: 228 HuBERT, 114 pitch, 10 style frames
    units = json.loads(META_UNITS.read_text())["units"]
    utt = U("meta", 9.135, "x", [W("x", 0.1, 9.0)])
    cfg = InterleaveConfig(expressive=True)
    streams = check_units(utt, units, cfg)
    assert {k: len(v) for k, v in streams.items()} == {"hubert": 228, "pitch": 114, "style": 10}
    assert streams["hubert"][:3] == units["hubert"].split()[:3]

    def dropped(name: str, n: int) -> dict:
        return {**units, name: " ".join(units[name].split()[:-n])}

    # the tolerance is max(0.1 s, one frame): 2 HuBERT frames short (0.08 s) pass, 4 (0.16 s) do not;
    # at 1 Hz a style stream may miss one frame (0.135 s short) but not two (1.135 s)
    check_units(utt, dropped("hubert", 2), cfg)
    check_units(utt, dropped("style", 1), cfg)
    for name, n in (("hubert", 4), ("pitch", 3), ("style", 2)):
        with pytest.raises(SkipDocument, match=name) as exc:
            check_units(utt, dropped(name, n), cfg)
        assert exc.value.reason == "unit_count_mismatch"


def test_read_units(tmp_path):
    p = tmp_path / "units.jsonl"
    p.write_text('{"id": "a", "hubert": "1 2"}\n\n{"audio": "x/b.wav", "hubert": "3"}\n')
    units = read_units(p)
    assert units["a"]["hubert"] == "1 2"
    assert units["x/b.wav"]["hubert"] == "3"
    assert units[str((tmp_path / "x/b.wav").resolve())]["hubert"] == "3"
    p.write_text('{"id": "a", "hubert": "1 2"}\n{"id": "b"}\n')
    with pytest.raises(ValueError, match=r"units.jsonl:2: .*hubert"):
        read_units(p)
    p.write_text('{"id": "a", "hubert": "1 2"}\nnot json\n')
    with pytest.raises(ValueError, match=r"units.jsonl:2: invalid JSON"):
        read_units(p)


def test_config_validation():
    with pytest.raises(ValueError, match="text_span_min"):
        InterleaveConfig(text_span_min=5, text_span_max=4)
    with pytest.raises(ValueError, match="speech_span_min"):
        InterleaveConfig(speech_span_min=0)


def test_group_utterances():
    def u(i, speaker, n, split="train"):
        x = make_utt(n, i, f"u{i}")
        x.speaker, x.split = speaker, split
        return x

    utts = [u(0, "a", 5), u(1, "b", 5), u(2, "a", 5), u(3, "a", 5, "valid"), u(4, "a", 3), u(5, "b", 20), u(6, "a", 1)]
    assert group_utterances(utts, 0) == [[i] for i in range(7)]
    assert group_utterances(utts, 12) == [[0, 2, 4], [1, 5], [3], [6]]


def test_grouped_interleaving_keeps_each_utterance_time_range():
    utts = []
    units = []
    for k in range(4):
        utt = make_utt(9, 10 + k, f"g{k}")
        utts.append(utt)
        # values k*1000 + frame index: a token tells its utterance and frame
        units.append({name: " ".join(str(k * 1000 + int(v)) for v in s.split()) for name, s in index_units(utt).items()})
    cfg = InterleaveConfig(text_span_min=3, text_span_max=7, speech_span_min=3, speech_span_max=7, expressive=True, group_words=30)
    docs, skipped = make_group_documents(list(zip(utts, units)), cfg, seed=1)
    assert skipped == []
    assert [d.subset for d in docs] == ["speech"] * 4 + ["text"] * 4 + ["interleaved"]
    doc = docs[-1]
    assert doc.id == "g0+g1+g2+g3"
    by_id = {u.id: k for k, u in enumerate(utts)}
    all_words = [w for u in utts for w in u.words]
    assert " ".join(s.content for s in doc.spans if s.modality == "text") == " ".join(
        w.word for s in doc.spans if s.modality == "text" for w in all_words[s.first_word : s.end_word]
    )
    crossed = False
    for span in doc.spans:
        if span.modality != "speech":
            continue
        crossed |= len(span.ranges) > 1
        ranges = {by_id[uid]: (a, b) for uid, a, b in span.ranges}
        for m in SPEECH_TOKEN_RE.finditer(span.content):
            k, i = divmod(int(m.group(2)), 1000)
            a, b = ranges[k]
            assert a - 1e-9 <= i / RATES[m.group(1)] < b + 1e-9
    assert crossed  # some speech span spans two utterances
    bad = make_utt(9, 99, "bad")
    docs, skipped = make_group_documents([(utts[0], units[0]), (bad, None)], cfg, seed=1)
    assert ("interleaved", "missing_units") in skipped and docs[-1].id == "g0"
