"""Manifest reading, writing and checking (no speech synthesis: tiny WAVs written here)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import soundfile as sf

from spiritlm.corpus.manifest import (
    ManifestError,
    Phone,
    Utterance,
    Word,
    check_manifest,
    iter_manifest,
    read_manifest,
    write_manifest,
)

SR = 16000


def _utt(folder, uid: str, seconds: float = 1.0, **kw) -> Utterance:
    path = os.path.join(folder, "wavs", f"{uid}.wav")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    n = int(seconds * SR)
    sf.write(path, (0.1 * np.sin(np.arange(n) * 0.05)).astype(np.float32), SR, subtype="PCM_16")
    return Utterance(
        id=uid,
        audio=path,
        sample_rate=SR,
        duration=n / SR,
        speaker="spk0",
        style="neutral",
        text="hello world",
        words=[Word("hello", 0.1, 0.4), Word("world", 0.4, 0.8)],
        phones=[Phone("h", 0.1, 0.2), Phone("ə", 0.2, 0.4), Phone("w", 0.4, 0.8)],
        **kw,
    )


@pytest.fixture
def manifest(tmp_path):
    utts = [
        _utt(tmp_path, "a", sentiment="positive", split="train", extra={"source": "sentiment"}),
        _utt(tmp_path, "b", intent="call_contact", split="valid", extra={"slots": {"contact": "anna"}, "source": "intent"}),
        _utt(tmp_path, "c", 1.5, split="test"),
    ]
    path = tmp_path / "manifest.jsonl"
    write_manifest(path, utts)
    return path, utts


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def _write_lines(path, objs_or_strings) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for o in objs_or_strings:
            f.write((o if isinstance(o, str) else json.dumps(o)) + "\n")


def test_round_trip_relative_paths_and_key_order(manifest):
    path, utts = manifest
    lines = _lines(path)
    assert [line["audio"] for line in lines] == ["wavs/a.wav", "wavs/b.wav", "wavs/c.wav"]
    assert list(lines[1]) == [
        "id", "audio", "sample_rate", "duration", "speaker", "style", "text", "words", "phones",
        "intent", "slots", "split", "source",
    ]
    back = read_manifest(path)
    assert back == utts  # audio resolved back to the same absolute paths
    assert list(iter_manifest(path)) == utts
    assert os.path.isabs(back[0].audio)
    # Rewriting what was read gives the same bytes.
    again = path.parent / "again.jsonl"
    write_manifest(again, back)
    assert again.read_bytes() == path.read_bytes()


def test_audio_outside_the_folder_stays_absolute(tmp_path):
    utt = _utt(tmp_path / "elsewhere", "x")
    path = tmp_path / "sub" / "m.jsonl"
    write_manifest(path, [utt])
    assert _lines(path)[0]["audio"] == os.path.abspath(utt.audio)
    assert read_manifest(path)[0].audio == utt.audio


def test_write_refuses_nan(tmp_path):
    utt = _utt(tmp_path, "a")
    utt.words[0].start = float("nan")
    with pytest.raises(ValueError):
        write_manifest(tmp_path / "m.jsonl", [utt])
    assert not os.path.exists(tmp_path / "m.jsonl")


def test_valid_manifest_checks_clean(manifest):
    path, _ = manifest
    report = check_manifest(path)
    assert report.ok, report.problems
    assert report.num_lines == report.num_ok == 3
    assert report.total_seconds == pytest.approx(3.5)


@pytest.mark.parametrize(
    "line, corrupt, expected",
    [
        (2, lambda d: d.update(audio="wavs/nope.wav"), "audio file missing"),
        (1, lambda d: d.update(duration=d["duration"] + 0.05), "duration"),
        (3, lambda d: d["words"].reverse(), "not ordered or overlapping"),
        (2, lambda d: d.pop("speaker"), "missing key 'speaker'"),
        (1, lambda d: d["words"][0].update(start=float("nan")), "finite number"),
        (3, lambda d: d["words"][1].update(start=0.9, end=0.85), "start after end"),
        (2, lambda d: d["words"][1].update(end=9.0), "outside the audio"),
        (1, lambda d: d["phones"].insert(1, {"phone": "x", "start": 0.15, "end": 0.3}), "phones[1]"),
        (3, lambda d: d.update(sample_rate=22050), "22050"),
        (2, lambda d: d.update(sample_rate="16000"), "positive integer"),
        (1, lambda d: d.update(words=[{"word": "", "start": 0.1, "end": 0.2}]), "non-empty string"),
        (3, lambda d: d.update(id="a"), "duplicate id"),
        (2, lambda d: d.update(duration=-1), "positive finite"),
    ],
)
def test_check_reports_each_corruption_on_its_line(manifest, line, corrupt, expected):
    path, _ = manifest
    lines = _lines(path)
    corrupt(lines[line - 1])
    _write_lines(path, lines)
    report = check_manifest(path)
    assert not report.ok
    assert report.bad_lines == [line], report.problems
    assert any(expected in p.reason for p in report.problems), report.problems
    assert report.num_ok == 2


def test_check_collects_all_problems_and_survives_bad_json(manifest):
    path, _ = manifest
    lines = _lines(path)
    lines[0]["words"].reverse()
    lines[2].pop("text")
    _write_lines(path, [lines[0], '{"id": "broken", ', lines[1], "", lines[2], "[1, 2]"])
    report = check_manifest(path)
    by_line = {p.line: p for p in report.problems}
    assert sorted(by_line) == [1, 2, 5, 6]  # the blank line 4 is skipped
    assert "invalid JSON" in by_line[2].reason
    assert by_line[1].id == "a" and "missing key 'text'" in by_line[5].reason
    assert "JSON object" in by_line[6].reason
    assert report.num_lines == 5 and report.num_ok == 1


def test_check_unreadable_audio_and_stereo(manifest, tmp_path):
    path, _ = manifest
    (tmp_path / "wavs" / "a.wav").write_bytes(b"not a wav file")
    stereo = 0.1 * np.random.default_rng(0).standard_normal((SR, 2)).astype(np.float32)
    sf.write(tmp_path / "wavs" / "b.wav", stereo, SR)
    report = check_manifest(path)
    reasons = {p.line: p.reason for p in report.problems}
    assert "unreadable" in reasons[1]
    assert 2 not in reasons  # stereo is downmixed, as spiritlm tokenize does (issue 18 item 12)
    assert check_manifest(path, check_audio=False).ok


def test_read_manifest_errors_name_file_and_line(manifest):
    path, _ = manifest
    lines = _lines(path)
    lines[1].pop("words")
    _write_lines(path, lines)
    with pytest.raises(ManifestError) as e:
        read_manifest(path)
    assert e.value.line == 2 and str(path) in str(e.value) and "'words'" in str(e.value)

    _write_lines(path, [lines[0], "{oops"])
    with pytest.raises(ManifestError, match=r":2: invalid JSON"):
        read_manifest(path)

    _write_lines(path, [lines[0], lines[0]])
    with pytest.raises(ManifestError, match="duplicate id 'a'"):
        read_manifest(path)

    with pytest.raises(ManifestError, match="cannot open"):
        read_manifest(path.parent / "missing.jsonl")


def test_check_missing_or_empty_manifest(tmp_path):
    report = check_manifest(tmp_path / "none.jsonl")
    assert not report.ok and report.problems[0].line == 0
    (tmp_path / "empty.jsonl").write_text("")
    assert not check_manifest(tmp_path / "empty.jsonl").ok


def test_check_cli_exit_status(manifest, capsys):
    from spiritlm.corpus.cli import check

    path, _ = manifest
    check(str(path))
    assert "OK" in capsys.readouterr().out
    lines = _lines(path)
    lines[2]["words"].reverse()
    _write_lines(path, lines)
    with pytest.raises(SystemExit) as e:
        check(str(path))
    assert e.value.code == 1
    out = capsys.readouterr().out
    assert "line 3 (c)" in out and "not ordered" in out


def test_check_accepts_the_48khz_stereo_that_tokenize_accepts(tmp_path, capsys):
    """Issue 18 item 12: ``corpus check`` rejected 48 kHz stereo ("expected mono") that ``tokenize``
    downmixes and resamples; one validator now gives one answer."""
    from spiritlm.audio import load_audio
    from spiritlm.cli import main
    from spiritlm.tokenizers.utils import load_audio_batch
    from spiritlm.corpus.manifest import read_audio_manifest

    t = np.arange(48000) / 48000
    stereo = np.stack([0.3 * np.sin(2 * np.pi * 220 * t), 0.2 * np.sin(2 * np.pi * 330 * t)], axis=1).astype(np.float32)
    sf.write(tmp_path / "a.wav", stereo, 48000, subtype="PCM_16")
    line = {"id": "a", "audio": "a.wav", "sample_rate": 48000, "duration": 1.0, "speaker": "s", "style": "neutral",
            "text": "hello", "words": [{"word": "hello", "start": 0.1, "end": 0.9}]}
    (tmp_path / "m.jsonl").write_text(json.dumps(line) + "\n")
    main(["corpus", "check", str(tmp_path / "m.jsonl")])  # raises SystemExit(1) on any problem
    report = check_manifest(tmp_path / "m.jsonl")
    assert report.ok and report.num_ok == 1, report.problems
    errors: list = []
    kept, wavs = load_audio_batch(read_audio_manifest(tmp_path / "m.jsonl"), errors)  # what tokenize reads
    assert not errors and wavs[0].shape == (16000,) and load_audio(tmp_path / "a.wav").ndim == 1

    # a file both refuse stays refused by both (too short: 40 ms)
    sf.write(tmp_path / "b.wav", stereo[:1920], 48000, subtype="PCM_16")
    (tmp_path / "m2.jsonl").write_text(json.dumps({**line, "id": "b", "audio": "b.wav", "duration": 0.04,
                                                   "words": [{"word": "hello", "start": 0.0, "end": 0.04}]}) + "\n")
    assert not check_manifest(tmp_path / "m2.jsonl").ok
    load_audio_batch(read_audio_manifest(tmp_path / "m2.jsonl"), errors)
    assert len(errors) == 1 and "too short" in errors[0]["error"]
