"""Token formats: Meta compatibility, deduplication, modality splitting (with hypothesis)."""

import doctest
import json
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import spiritlm.formats as F
from spiritlm.formats import (
    Segment,
    deduplicate,
    expand,
    join_modalities,
    speech_vocabulary,
    split_modalities,
    string_to_units,
    units_to_string,
)

META = json.loads((Path(__file__).parent / "data" / "meta_7143-88743-0029_units.json").read_text())


def test_meta_release_vectors_expressive_and_base():
    """Units Meta's tokenizer gives the real LibriSpeech file -> the strings Meta's tests expect."""
    units = META["units"]
    assert units_to_string(units, has_pitch=True, has_style=True) == META["expressive_string"]
    assert units_to_string(units) == META["base_string"]


def test_meta_docstring_example_string_to_units():
    s = "[St81][Hu78][Pi13][Hu42][Hu81][Hu159][Hu316][Pi3][Hu259]"
    assert string_to_units(s) == {
        "hubert": "78 42 81 159 316 259",
        "pitch": "13 13 13 13 13 3",
        "style": "81 81 81 81 81 81",
    }


def test_docstrings_examples():
    failures, _ = doctest.testmod(F, verbose=False)
    assert failures == 0


def test_string_to_units_of_meta_expressive_string_aligns_on_hubert():
    units = string_to_units(META["expressive_string"])
    hubert_runs, _ = deduplicate(META["units"]["hubert"].split())
    assert units["hubert"].split() == hubert_runs
    assert len(units["pitch"].split()) == len(hubert_runs) == len(units["style"].split())
    # the last style token of the file (83) only precedes the last HuBERT token
    assert units["style"].split()[-1] == "83" and units["style"].split()[-2] == "71"


def test_string_to_units_fallbacks():
    # HuBERT tokens before the first pitch/style token take the first one
    default = string_to_units("[Hu1][Pi5][Hu2]")
    assert default["hubert"] == "1 2" and default["pitch"] == "5 5"
    assert default["style"] in ("71 71", "68 68", "98 98")
    out = string_to_units("[Hu1][Pi5][Hu2]", fallback_style=7)
    assert out == {"hubert": "1 2", "pitch": "5 5", "style": "7 7"}
    # no pitch, no style: hubert only
    assert string_to_units("[Text]hi[Speech][Hu3][Hu3]") == {"hubert": "3 3"}
    # style without pitch is kept
    assert string_to_units("[St2][Hu3]") == {"hubert": "3", "style": "2"}
    # Meta's random fallback picks one of its most common styles
    rng = random.Random(0)
    picks = {string_to_units("[Pi1][Hu1]", rng=rng)["style"] for _ in range(50)}
    assert picks <= {"71", "68", "98"} and len(picks) > 1


def test_duplicate_hubert_for_multiple_pitch():
    s = "[St1][Pi5][Hu10][Pi6][Pi7][Hu11]"
    assert string_to_units(s) == {"hubert": "10 11", "pitch": "5 7", "style": "1 1"}
    assert string_to_units(s, duplicate_hubert_for_multiple_pitch=True) == {
        "hubert": "10 10 11",
        "pitch": "5 7 7",
        "style": "1 1 1",
    }


def test_custom_keys():
    units = {"h": "1 1 2", "p": "3", "s": "4"}
    s = units_to_string(units, has_pitch=True, has_style=True, hubert_key="h", pitch_key="p", style_key="s")
    assert s == "[St4][Pi3][Hu1][Hu2]"
    assert string_to_units(s, hubert_key="h", pitch_key="p", style_key="s") == {"h": "1 2", "p": "3 3", "s": "4 4"}


def test_malformed_pieces_are_not_tokens():
    # Meta's split-on-'[' parser would read '12]ab' here; only whole tokens count.
    assert string_to_units("[Hu12]abc[Hu1x][Hu][Pi][Hu7") == {"hubert": "12"}


def test_speech_vocabulary_sizes():
    assert len(speech_vocabulary(501)) == 503
    expressive = speech_vocabulary(501, 64, 100)
    assert len(expressive) == 667 and len(set(expressive)) == 667
    assert expressive[:3] == ["[Text]", "[Speech]", "[Hu0]"] and expressive[-1] == "[St99]"


def test_split_modalities_examples():
    segs = split_modalities("[Text]the cat[Speech][Hu1] [Hu2][Pi3] hello [Hu4x][Text] [Speech][St3")
    assert segs == [
        Segment("text", text="the cat"),
        Segment("speech", tokens=["[Hu1]", "[Hu2]", "[Pi3]"]),
        Segment("text", text="hello [Hu4x]"),
        Segment("text", text="[St3"),
    ]
    # a marker starts a new segment even within one modality
    assert len(split_modalities("[Speech][Hu1][Speech][Hu2]")) == 2
    assert split_modalities("") == []
    assert split_modalities("[Text][Speech]") == []


# ---------------------------------------------------------------------------------------------
# Property tests
# ---------------------------------------------------------------------------------------------


def _reference_units_to_string(units, has_pitch, has_style, rates, dedups):
    """Independent statement of the format: every kept token at frame_index / rate, ordered by
    time, style before pitch before hubert at equal times (a stable sort of the concatenation)."""
    items = []
    for name, prefix, on in (("style", "St", has_style), ("pitch", "Pi", has_pitch), ("hubert", "Hu", True)):
        if not on:
            continue
        toks = units[name].split()
        for i, tok in enumerate(toks):
            if dedups[name] and i > 0 and toks[i - 1] == tok:
                continue
            items.append((i / rates[name], f"[{prefix}{tok}]"))
    items.sort(key=lambda x: x[0])  # stable
    return "".join(t for _, t in items)


unit_lists = st.lists(st.integers(0, 12), min_size=0, max_size=60)


@settings(max_examples=300, deadline=None)
@given(
    hubert=unit_lists.filter(bool),
    pitch=unit_lists,
    style=unit_lists,
    has_pitch=st.booleans(),
    has_style=st.booleans(),
    rates=st.tuples(st.sampled_from([24.99, 25, 50]), st.sampled_from([12.5, 6.25, 25]), st.sampled_from([1, 2, 0.5])),
    dedups=st.tuples(st.booleans(), st.booleans(), st.booleans()),
)
def test_units_to_string_matches_reference(hubert, pitch, style, has_pitch, has_style, rates, dedups):
    units = {"hubert": " ".join(map(str, hubert)), "pitch": " ".join(map(str, pitch)), "style": " ".join(map(str, style))}
    rate = dict(zip(("hubert", "pitch", "style"), rates))
    dedup = dict(zip(("hubert", "pitch", "style"), dedups))
    got = units_to_string(
        units, has_pitch, has_style,
        hubert_rate=rate["hubert"], hubert_dedup=dedup["hubert"],
        pitch_rate=rate["pitch"], pitch_dedup=dedup["pitch"],
        style_rate=rate["style"], style_dedup=dedup["style"],
    )
    assert got == _reference_units_to_string(units, has_pitch, has_style, rate, dedup)


@settings(max_examples=200, deadline=None)
@given(hubert=unit_lists.filter(bool), dedup=st.booleans())
def test_hubert_round_trip(hubert, dedup):
    units = {"hubert": " ".join(map(str, hubert))}
    back = string_to_units(units_to_string(units, hubert_dedup=dedup))
    expected = deduplicate(hubert)[0] if dedup else hubert
    assert back == {"hubert": " ".join(map(str, expected))}


@settings(max_examples=200, deadline=None)
@given(hubert=unit_lists.filter(bool), pitch=unit_lists.filter(bool), style=unit_lists.filter(bool))
def test_expressive_round_trip_is_a_fixed_point(hubert, pitch, style):
    """Units -> string -> units aligns pitch and style on the deduplicated HuBERT tokens."""
    units = {k: " ".join(map(str, v)) for k, v in (("hubert", hubert), ("pitch", pitch), ("style", style))}
    s = units_to_string(units, has_pitch=True, has_style=True)
    aligned = string_to_units(s)
    assert len(aligned["hubert"].split()) == len(aligned["pitch"].split()) == len(aligned["style"].split())
    assert aligned["hubert"].split() == [str(h) for h in deduplicate(hubert)[0]]
    # every pitch / style value that survives is one of the inputs
    assert set(aligned["pitch"].split()) <= set(map(str, pitch))
    assert set(aligned["style"].split()) <= set(map(str, style))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(list("abc")), max_size=40))
def test_dedup_expand_inverse(tokens):
    values, durations = deduplicate(tokens)
    assert expand(values, durations) == tokens
    assert all(a != b for a, b in zip(values, values[1:]))
    assert sum(durations) == len(tokens)


def test_expand_errors():
    with pytest.raises(ValueError):
        expand([1, 2], [1])
    with pytest.raises(ValueError):
        expand([1], [-1])


bracketish = st.text(alphabet=st.sampled_from(list("[]HuPiStTextSpeech0123456789 x\n")), max_size=80)


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(max_size=200), bracketish))
def test_parser_never_raises(s):
    segs = split_modalities(s)
    for seg in segs:
        assert seg.modality in ("text", "speech")
        if seg.modality == "speech":
            assert seg.tokens and all(F.SPEECH_TOKEN_RE.fullmatch(t) for t in seg.tokens)
        else:
            assert seg.text == seg.text.strip() and seg.text
    string_to_units(s, fallback_style=0)  # never raises either


speech_segments = st.builds(
    lambda toks: Segment("speech", tokens=toks),
    st.lists(st.builds(lambda p, n: f"[{p}{n}]", st.sampled_from(["Hu", "Pi", "St"]), st.integers(0, 999)), min_size=1, max_size=10),
)
text_segments = st.builds(
    lambda t: Segment("text", text=t),
    st.text(alphabet=st.sampled_from(list("abcdefgh .,'?")), min_size=1, max_size=30)
    .map(str.strip)
    .filter(bool),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(speech_segments, text_segments), max_size=8))
def test_join_split_round_trip(segments):
    assert split_modalities(join_modalities(segments)) == segments
