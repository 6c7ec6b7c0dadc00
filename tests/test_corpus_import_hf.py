"""spiritlm corpus import hf (issue 16): Hugging Face datasets saved with save_to_disk (a DatasetDict's
splits become manifest splits) or as parquet, with an Audio column; embedded audio written once to
OUT/audio, audio files pointed at; bad rows counted and named; the manifest through check and tokenize."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from fixtures import REAL_FLAC as REAL
from fixtures import run_cli as run

from spiritlm.corpus.manifest import read_manifest

WORDS = [("THE", 0.10, 0.30), ("CAT", 0.30, 0.70), ("SAT", 0.90, 1.30)]


def _encode(wav: np.ndarray, rate: int, fmt: str) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wav, rate, format=fmt, subtype="PCM_16")
    return buf.getvalue()


def _tone(seconds: float, rate: int, freq: float, seed: int) -> np.ndarray:
    """A noisy tone, quantised to 16 bits (so a 16-bit file of it holds exactly these samples)."""
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * freq * t) + 0.02 * np.random.default_rng(seed).standard_normal(t.size)
    return (np.round(x * 32768) / 32768).astype(np.float32)


def make_dataset(root: Path) -> dict:
    """A DatasetDict (train: 3 rows, test: 2) saved with save_to_disk under root/saved and as parquet
    under root/parquet; returns {id: what the manifest must say, "samples": the audio it must hold}."""
    from datasets import Audio, Dataset, DatasetDict

    real = root / "files" / REAL.name  # an audio file on disk, referenced by its absolute path
    real.parent.mkdir(parents=True)
    shutil.copy(REAL, real)
    stereo = np.stack([_tone(0.8, 22050, 300, 3), _tone(0.8, 22050, 500, 4)], axis=1)
    rows = {
        "train": [
            dict(id="u0", audio={"bytes": _encode(_tone(1.6, 16000, 220, 0), 16000, "FLAC"), "path": "u0.flac"},
                 text="the cat sat", speaker_id=100, words=[{"word": w, "start": s, "end": e} for w, s, e in WORDS]),
            dict(id="u1", audio={"bytes": _encode(_tone(0.9, 16000, 330, 1), 16000, "WAV"), "path": None},
                 text="a  dog ran ", speaker_id=101, words=[]),
            dict(id="u2", audio={"bytes": None, "path": str(real)}, text="but the real file", speaker_id=7143, words=[]),
        ],
        "validation": [
            dict(id="u3", audio={"bytes": _encode(stereo, 22050, "WAV"), "path": "u3.wav"}, text="two channels",
                 speaker_id=101, words=[]),
            dict(id="u4", audio={"bytes": _encode(_tone(0.5, 24000, 440, 2), 24000, "FLAC"), "path": "x/u4.flac"},
                 text="twenty four k", speaker_id=102, words=[]),
        ],
    }
    dd = DatasetDict({split: Dataset.from_list(r).cast_column("audio", Audio()) for split, r in rows.items()})
    dd.save_to_disk(str(root / "saved"))
    (root / "parquet").mkdir()
    for split, ds in dd.items():
        ds.to_parquet(str(root / "parquet" / f"{split}-00000-of-00001.parquet"))
    real_wav, _ = sf.read(real, dtype="float32")
    samples = {
        "u0": _tone(1.6, 16000, 220, 0), "u1": _tone(0.9, 16000, 330, 1), "u2": real_wav,
        "u3": stereo.mean(axis=1), "u4": _tone(0.5, 24000, 440, 2),
    }
    expect = {
        "u0": ("the cat sat", "100", "train", 16000, 1.6),
        "u1": ("a dog ran", "101", "train", 16000, 0.9),
        "u2": ("but the real file", "7143", "train", 16000, 146160 / 16000),
        "u3": ("two channels", "101", "valid", 22050, 0.8),
        "u4": ("twenty four k", "102", "valid", 24000, 0.5),
    }
    return {"expect": expect, "samples": samples, "real": real}


def _check_import(out: Path, ds: dict, pointed: bool) -> list:
    utts = read_manifest(out / "manifest.jsonl")
    assert [u.id for u in utts] == ["u0", "u1", "u2", "u3", "u4"]
    for u in utts:
        text, speaker, split, rate, duration = ds["expect"][u.id]
        assert (u.text, u.speaker, u.split, u.sample_rate) == (text, speaker, split, rate), u.id
        assert u.duration == pytest.approx(duration, abs=1e-9), u.id
        wav, file_rate = sf.read(u.audio, dtype="float32")
        assert wav.ndim == 1 and file_rate == rate, u.id
        # 16-bit sources, so every clip holds exactly its samples (u3: their channel mean, written at 16 bits)
        np.testing.assert_allclose(wav, ds["samples"][u.id], atol=0 if u.id != "u3" else 1 / 32768, err_msg=u.id)
    by_id = {u.id: u for u in utts}
    written = ["u0.flac", "u1.wav", "u3.wav", "u4.flac"]
    if pointed:  # a file on disk is pointed at, not copied
        assert by_id["u2"].audio == str(ds["real"].resolve())
    else:  # save_to_disk embeds the bytes of audio files (their path becomes a bare name): written like the others
        assert by_id["u2"].audio == str(out.resolve() / "audio" / "u2.flac")
        written.insert(2, "u2.flac")
    assert sorted(p.name for p in (out / "audio").iterdir()) == written
    assert [(w.word, w.start, w.end) for w in by_id["u0"].words] == [
        (w, pytest.approx(s), pytest.approx(e)) for w, s, e in zip("the cat sat".split(), (0.1, 0.3, 0.9), (0.3, 0.7, 1.3))]
    assert all(not by_id[k].words for k in ("u1", "u2", "u3", "u4"))
    return utts


def test_hf_save_to_disk_and_parquet_import_check_and_tokenize(tmp_path, capsys):
    ds = make_dataset(tmp_path)
    code, out, err = run(["corpus", "import", "hf", "--src", tmp_path / "saved", "--out", tmp_path / "m"], capsys)
    assert code == 0, err
    assert "5 utterances" in out and "1 with word times" in out and "0 skipped" in out
    utts = _check_import(tmp_path / "m", ds, pointed=False)
    # the manifest's audio is relative to it: the import folder can move
    lines = [json.loads(x) for x in (tmp_path / "m" / "manifest.jsonl").read_text().splitlines()]
    assert lines[0]["audio"] == "audio/u0.flac"
    code, out, err = run(["corpus", "check", tmp_path / "m" / "manifest.jsonl"], capsys)
    assert code == 0 and "OK" in out, out + err

    # parquet files named the Hub's way (SPLIT-00000-of-00001.parquet): the same manifest; to_parquet
    # keeps a file's path without its bytes, so that file is pointed at
    code, out, err = run(["corpus", "import", "hf", "--src", tmp_path / "parquet", "--out", tmp_path / "p"], capsys)
    assert code == 0, err
    pq_utts = _check_import(tmp_path / "p", ds, pointed=True)
    strip = lambda us: [{**u.__dict__, "audio": None} for u in us]  # noqa: E731 (audio: checked above)
    assert strip(pq_utts) == strip(utts)

    # tokenize takes the imported manifest as it is (a real MFCC + k-means tokenizer; 22.05/24 kHz resampled)
    from spiritlm.tokenizers.features import FeatureConfig, load_backend
    from spiritlm.tokenizers.speech_tokenizer import SpeechTokenizer, UnitConfig, UnitTokenizer

    features = FeatureConfig(backend="mfcc")
    backend = load_backend(features)
    centers = np.random.default_rng(0).standard_normal((8, backend.dim)).astype(np.float32)
    SpeechTokenizer(UnitTokenizer(backend, centers, UnitConfig(features=features))).save(tmp_path / "tok")
    code, _, err = run(["tokenize", "--manifest", tmp_path / "m" / "manifest.jsonl", "--speech_tokenizer", tmp_path / "tok",
                        "--out", tmp_path / "u.jsonl"], capsys)
    assert code == 0, err
    units = {d["id"]: d for d in map(json.loads, (tmp_path / "u.jsonl").read_text().splitlines())}
    assert set(units) == {u.id for u in utts}
    for u in utts:  # 25 Hz units over each clip's own duration
        n = len(units[u.id]["hubert"].split())
        assert abs(n - u.duration * 25) <= 2, (u.id, n)


def test_hf_columns_by_flag_split_override_and_speech_only(tmp_path, capsys):
    from datasets import Audio, Dataset

    rows = [dict(key=f"k{i}", speech={"bytes": _encode(_tone(0.3, 16000, 200 + 50 * i, i), 16000, "FLAC"), "path": None},
                 normalized_text=f"word {i}" if i else "", who=f"s{i % 2}", style="whisper",
                 times=[{"text": "word", "start": 0.0, "end": 0.1}, {"text": str(i), "start": 0.1, "end": 0.2}] if i == 2 else [])
            for i in range(3)]
    Dataset.from_list(rows).cast_column("speech", Audio()).save_to_disk(str(tmp_path / "d"))
    base = ["corpus", "import", "hf", "--src", tmp_path / "d", "--out", tmp_path / "m"]
    code, _, err = run(base, capsys)  # neither 'audio' nor a text column by a default name
    assert code == 1 and err.strip() == (f"spiritlm corpus import: error: {tmp_path / 'd'}: no transcript column (text, sentence, "
                                         "transcription; name it with --text_column, or --require_text false for speech only; "
                                         "columns: key, speech, normalized_text, who, style, times)")
    cols = ["--text_column", "normalized_text", "--speaker_column", "who", "--id_column", "key", "--words_column", "times"]
    code, _, err = run(base + cols + ["--split", "test"], capsys)
    assert code == 1 and f"{tmp_path / 'd'}: row 0 (id k0): empty transcript (column 'normalized_text'" in err
    code, _, err = run(base + cols + ["--split", "test", "--require_text", "false", "--overwrite", "true"], capsys)
    assert code == 0, err
    utts = {u.id: u for u in read_manifest(tmp_path / "m" / "manifest.jsonl")}
    assert sorted(utts) == ["k0", "k1", "k2"]  # the one Audio column is found by its type
    assert utts["k0"].text == "" and utts["k1"].text == "word 1" and utts["k1"].speaker == "s1"
    assert all(u.split == "test" and u.style == "whisper" for u in utts.values())
    assert [(w.word, w.end) for w in utts["k2"].words] == [("word", 0.1), ("2", 0.2)]
    # --max_duration applies as to every importer
    code, _, err = run(base + cols + ["--require_text", "false", "--max_duration", "0.25", "--overwrite", "true"], capsys)
    assert code == 1 and "lasts 0.3 s > --max_duration 0.25" in err
    # parquet in a SPLIT/ folder (the Hub's other layout): the folder names the split
    (tmp_path / "pq" / "validation").mkdir(parents=True)
    Dataset.from_list(rows).cast_column("speech", Audio()).to_parquet(str(tmp_path / "pq" / "validation" / "part0.parquet"))
    code, _, err = run(["corpus", "import", "hf", "--src", tmp_path / "pq", "--out", tmp_path / "v", *cols, "--require_text", "false"],
                       capsys)
    assert code == 0, err
    assert [(u.id, u.split) for u in read_manifest(tmp_path / "v" / "manifest.jsonl")] == [("k0", "valid"), ("k1", "valid"), ("k2", "valid")]


def test_hf_bad_rows_are_counted_and_named(tmp_path, capsys):
    from datasets import Audio, Dataset

    good = _encode(_tone(0.5, 16000, 300, 0), 16000, "FLAC")
    rows = [
        dict(id="ok", audio={"bytes": good, "path": None}, sentence="fine"),
        dict(id="garbage", audio={"bytes": b"RIFF not audio at all" * 10, "path": None}, sentence="bad bytes"),
        dict(id="silent", audio={"bytes": good, "path": None}, sentence="   "),
        dict(id="empty", audio={"bytes": _encode(np.zeros(0, np.float32), 16000, "WAV"), "path": None}, sentence="no samples"),
        dict(id="gone", audio={"bytes": None, "path": str(tmp_path / "missing.wav")}, sentence="missing file"),
        dict(id="ok", audio={"bytes": good, "path": None}, sentence="twice"),
    ]
    (tmp_path / "missing.wav").write_bytes(good)  # there while the parquet file is written (datasets reads its size)
    Dataset.from_list(rows).cast_column("audio", Audio()).to_parquet(str(tmp_path / "bad.parquet"))
    (tmp_path / "missing.wav").unlink()
    src = tmp_path / "bad.parquet"
    argv = ["corpus", "import", "hf", "--src", src, "--out", tmp_path / "m"]
    code, out, err = run(argv, capsys)
    assert code == 1
    assert f"{src}: row 1 (id garbage): audio bytes: not a readable audio file" in err
    assert f"{src}: row 2 (id silent): empty transcript (column 'sentence'" in err
    assert f"{src}: row 3 (id empty): audio bytes: empty audio (0 samples)" in err
    assert f"{src}: row 4 (id gone): no audio bytes, and its path '{tmp_path / 'missing.wav'}' is not a file" in err
    assert f"{src}: row 5 (id ok): id 'ok' already used by {src}: row 0 (id ok)" in err
    assert err.strip().splitlines()[-1].startswith("spiritlm corpus import: error: 5 item(s) skipped")
    assert len((tmp_path / "m" / "import_skipped.txt").read_text().splitlines()) == 5
    assert [u.id for u in read_manifest(tmp_path / "m" / "manifest.jsonl")] == ["ok"]
    assert sorted(p.name for p in (tmp_path / "m" / "audio").iterdir()) == ["ok.flac"]  # no audio for the bad rows
    # a finished import is not replaced without --overwrite true
    code, _, err = run(argv + ["--allow_skips", "true"], capsys)
    assert code == 1 and "already exists" in err and "pass --overwrite true" in err
    code, _, err = run(argv + ["--allow_skips", "true", "--overwrite", "true"], capsys)
    assert code == 0, err
    # a column named by a flag that is not there: one line naming the file and the flag
    code, _, err = run(["corpus", "import", "hf", "--src", src, "--out", tmp_path / "n", "--speaker_column", "spk"], capsys)
    assert code == 1 and err.strip() == (f"spiritlm corpus import: error: {src}: no column 'spk' (--speaker_column; "
                                         "columns: id, audio, sentence)")
    code, _, err = run(["corpus", "import", "hf", "--src", src, "--out", tmp_path / "n", "--audio_column", "sentence"], capsys)
    # a string column is a column of paths
    assert code == 1 and f"{src}: row 0 (id ok): no audio bytes, and its path 'fine' is not a file" in err
    code, _, err = run(["corpus", "import", "hf", "--src", tmp_path / "nothing", "--out", tmp_path / "n"], capsys)
    assert code == 1 and err.strip().endswith(f"{tmp_path / 'nothing'}: no such file or folder (--src)")
    code, _, err = run(["corpus", "import", "folder", "--src", tmp_path, "--out", tmp_path / "n", "--text_column", "x"], capsys)
    assert code == 1 and "--text_column is for corpus import hf, not folder" in err


def test_hf_interrupted_import_resumes_with_the_audio_it_wrote(tmp_path, capsys):
    make_dataset(tmp_path)
    argv = ["corpus", "import", "hf", "--src", tmp_path / "saved", "--out", tmp_path / "m"]
    assert run(argv, capsys)[0] == 0
    manifest = (tmp_path / "m" / "manifest.jsonl").read_text()
    audio = {p.name: p.stat().st_ino for p in (tmp_path / "m" / "audio").iterdir()}
    # an interrupted run: its audio is there, its manifest not yet, and a killed writer left a temporary file
    (tmp_path / "m" / "manifest.jsonl").unlink()
    (tmp_path / "m" / "audio" / ".u9.wav.tmp-999999999.wav").write_bytes(b"half")
    code, _, err = run(argv, capsys)
    assert code == 0, err
    assert (tmp_path / "m" / "manifest.jsonl").read_text() == manifest
    assert {p.name: p.stat().st_ino for p in (tmp_path / "m" / "audio").iterdir()} == audio  # reused, not rewritten
    # --overwrite true on a finished import writes its audio again
    code, _, err = run(argv + ["--overwrite", "true"], capsys)
    assert code == 0, err
    now = {p.name: p.stat().st_ino for p in (tmp_path / "m" / "audio").iterdir()}
    assert set(now) == set(audio) and all(now[k] != audio[k] for k in audio)


@pytest.mark.parametrize("name, split", [("train", "train"), ("train.clean.100", "train"), ("validation", "valid"),
                                         ("dev", "valid"), ("test.other", "test"), ("trainee", "trainee"), (None, None)])
def test_hf_split_names(name, split):
    from spiritlm.corpus.importers import hf_split

    assert hf_split(name) == split


def test_hf_rows_refused_or_cut_by_max_duration_leave_no_audio(tmp_path, capsys):
    """--max_duration refuses a long row before its clip is written; a row written to be cut
    (--segment_long) but not kept leaves no clip in OUT/audio/ either."""
    make_dataset(tmp_path)
    argv = ["corpus", "import", "hf", "--src", tmp_path / "saved", "--out", tmp_path / "m", "--max_duration", "1.0"]
    code, _, err = run(argv, capsys)
    assert code == 1 and f"{tmp_path / 'saved' / 'train'}: row 0 (id u0): audio bytes: lasts 1.6 s > --max_duration 1" in err
    assert sorted(p.name for p in (tmp_path / "m" / "audio").iterdir()) == ["u1.wav", "u3.wav", "u4.flac"]
    assert [u.id for u in read_manifest(tmp_path / "m" / "manifest.jsonl")] == ["u1", "u3", "u4"]
    # --segment_long: the long clip is written to be cut; import cannot cut a transcript without word times (it loads
    # no aligner), so the row is skipped, saying what to run instead, and its clip does not stay behind
    code, _, err = run([*argv[:-2], "--max_duration", "5", "--segment_long", "true", "--vad", "energy", "--overwrite", "true",
                        "--allow_skips", "true"], capsys)
    assert code == 0 and f"{tmp_path / 'm' / 'audio' / 'u2.flac'}: lasts 9.1 s and has a transcript but no word times" in err, err
    assert "then spiritlm corpus segment --aligner" in err
    assert [u.id for u in read_manifest(tmp_path / "m" / "manifest.jsonl")] == ["u0", "u1", "u3", "u4"]
    assert sorted(p.name for p in (tmp_path / "m" / "audio").iterdir()) == ["u0.flac", "u1.wav", "u3.wav", "u4.flac"]
    # a DatasetDict's splits (train, validation) are kept unless --split_by replaces them (here: whole speakers)
    code, _, err = run(["corpus", "import", "hf", "--src", tmp_path / "saved", "--out", tmp_path / "s", "--split_by", "speaker",
                        "--split_fractions", '{"train": 0.5, "test": 0.5}'], capsys)
    assert code == 0, err
    got = {u.id: (u.speaker, u.split) for u in read_manifest(tmp_path / "s" / "manifest.jsonl")}
    assert {s for _, s in got.values()} == {"train", "test"}
    assert len({s for spk, s in got.values() if spk == "101"}) == 1  # u1 (train) and u3 (validation): one speaker, one split
