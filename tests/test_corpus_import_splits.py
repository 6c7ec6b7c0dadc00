"""spiritlm corpus import --split_by (issue 16): held-out valid/test splits for sources without
their own (a folder of recordings): deterministic, speaker-disjoint, stable when files are added;
fractions checked; a source's own splits kept unless --split_by replaces them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from fixtures import run_cli as run

from spiritlm.corpus.importers import assign_splits, check_split_fractions
from spiritlm.corpus.manifest import Utterance, read_manifest

FRACTIONS = json.dumps({"train": 0.5, "valid": 0.25, "test": 0.25})


def make_recordings(root: Path, speakers: range, takes: range) -> None:
    """root/spkS/takeK.wav (0.1 s) + takeK.txt for every speaker and take."""
    for s in speakers:
        d = root / f"spk{s}"
        d.mkdir(parents=True, exist_ok=True)
        for k in takes:
            sf.write(d / f"take{k}.wav", 0.1 * np.sin(np.arange(1600) * (0.05 + 0.01 * k)).astype(np.float32), 16000)
            (d / f"take{k}.txt").write_text(f"speaker {s} take {k}\n")


def _splits(out: Path) -> dict[str, tuple[str, str]]:
    return {u.id: (u.split, u.speaker) for u in read_manifest(out / "manifest.jsonl")}


def test_split_by_speaker_is_deterministic_disjoint_and_stable_when_files_are_added(tmp_path, capsys):
    src = tmp_path / "rec"
    make_recordings(src, range(12), range(3))
    argv = ["corpus", "import", "folder", "--src", src, "--split_by", "speaker", "--split_fractions", FRACTIONS]
    code, out, err = run([*argv, "--out", tmp_path / "a"], capsys)
    assert code == 0, err
    assert "splits: test=" in out  # the counts are printed
    a = _splits(tmp_path / "a")
    assert len(a) == 36 and {s for s, _ in a.values()} == {"train", "valid", "test"}
    by_split: dict[str, set] = {}
    for split, spk in a.values():
        by_split.setdefault(split, set()).add(spk)
    assert sum(len(v) for v in by_split.values()) == 12  # every speaker in exactly one split
    # the same command: the same splits
    assert run([*argv, "--out", tmp_path / "b"], capsys)[0] == 0
    assert _splits(tmp_path / "b") == a
    # another seed: another assignment
    assert run([*argv, "--out", tmp_path / "c", "--seed", "1"], capsys)[0] == 0
    assert _splits(tmp_path / "c") != a
    # new takes of known speakers and new speakers: what was imported keeps its split, new takes follow their speaker
    make_recordings(src, range(16), range(5))
    assert run([*argv, "--out", tmp_path / "d"], capsys)[0] == 0
    d = _splits(tmp_path / "d")
    assert len(d) == 80 and {k: d[k] for k in a} == a
    spk_split = {spk: split for split, spk in a.values()}
    assert all(split == spk_split[spk] for split, spk in d.values() if spk in spk_split)


def test_split_by_utterance_and_which_wins(tmp_path, capsys):
    src = tmp_path / "rec"
    make_recordings(src, range(3), range(10))
    argv = ["corpus", "import", "folder", "--src", src, "--split_by", "utterance", "--split_fractions", FRACTIONS]
    assert run([*argv, "--out", tmp_path / "a"], capsys)[0] == 0
    a = _splits(tmp_path / "a")
    assert {s for s, _ in a.values()} == {"train", "valid", "test"}
    per_speaker = {spk: {s for s, sp in a.values() if sp == spk} for spk in ("spk0", "spk1", "spk2")}
    assert any(len(v) > 1 for v in per_speaker.values())  # utterances of one speaker in several splits
    make_recordings(src, range(4), range(14))
    assert run([*argv, "--out", tmp_path / "b"], capsys)[0] == 0
    b = _splits(tmp_path / "b")
    assert len(b) == 56 and {k: b[k] for k in a} == a
    # a source's own splits (a {split} in the pattern, LibriSpeech's folder names, a DatasetDict) are kept
    # without --split_by, replaced with it
    own = tmp_path / "own"
    make_recordings(own / "test", range(4), range(2))
    pattern = ["--pattern", "{split}/{speaker}/*"]
    assert run(["corpus", "import", "folder", "--src", own, "--out", tmp_path / "o", *pattern], capsys)[0] == 0
    assert {s for s, _ in _splits(tmp_path / "o").values()} == {"test"}
    code, _, err = run(["corpus", "import", "folder", "--src", own, "--out", tmp_path / "p", *pattern, "--split_by", "utterance",
                        "--split_fractions", json.dumps({"train": 0.6, "valid": 0.4})], capsys)
    assert code == 0, err
    assert {s for s, _ in _splits(tmp_path / "p").values()} == {"train", "valid"}


def test_bad_fractions_and_empty_splits_are_one_line_naming_the_flag(tmp_path, capsys):
    src = tmp_path / "rec"
    make_recordings(src, range(3), range(2))
    base = ["corpus", "import", "folder", "--src", src, "--out", tmp_path / "m"]
    cases = [
        (["--split_by", "utterance", "--split_fractions", '{"train": 0.9, "test": 0.2}'],
         '--split_fractions {"train": 0.9, "test": 0.2} sums to 1.1, not 1'),
        (["--split_by", "utterance", "--split_fractions", '{"train": 1.2, "test": -0.2}'],
         "--split_fractions: split 'train' has fraction 1.2; each must be in (0, 1]"),
        (["--split_by", "speaker", "--split", "train"], "--split train and --split_by speaker both set the splits: give one"),
        (["--split_fractions", FRACTIONS], "--split_fractions needs --split_by utterance or speaker"),
        # 3 speakers cannot fill 5% splits: refused, not written with an empty test split
        (["--split_by", "speaker"], "--split_by speaker: split 'valid' got no utterance (3 speakers hashed with --seed 0 into "
                                    '--split_fractions {"train": 0.9, "valid": 0.05, "test": 0.05}); try --split_by utterance'),
    ]
    for flags, message in cases:
        code, _, err = run(base + flags, capsys)
        assert code == 1 and len(err.strip().splitlines()) == 1, (flags, err)
        assert err.strip().startswith(f"spiritlm corpus import: error: {message}"), (flags, err)
        assert not (tmp_path / "m" / "manifest.jsonl").exists()


def test_fractions_hold_in_expectation_over_keys():
    """Shares of 3000 utterances (and of 600 speakers) within a few standard deviations of the fractions."""
    fr = check_split_fractions(None)
    utts = [Utterance(id=f"u{i}", audio="x.wav", sample_rate=16000, duration=1.0, speaker=f"s{i % 600}",
                       style="neutral", text="", words=[]) for i in range(3000)]
    for by, n in (("utterance", 3000), ("speaker", 600)):
        assign_splits(utts, by, fr, seed=0)
        keys = {(u.id if by == "utterance" else u.speaker): u.split for u in utts}
        for name, f in fr.items():
            share = sum(s == name for s in keys.values()) / n
            assert abs(share - f) < 4 * (f * (1 - f) / n) ** 0.5, (by, name, share)
    with pytest.raises(ValueError, match="--split_by must be one of"):
        assign_splits(utts, "chapter", fr)
