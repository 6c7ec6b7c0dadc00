"""`spiritlm data build | inspect | train-text-tokenizer` on the hand-made fixture manifest."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

from spiritlm.cli import main
from spiritlm.data.build import build_dataset, read_manifest_utterances
from spiritlm.data.loader import LoaderConfig, PackedLoader
from spiritlm.data.shards import TokenDir
from spiritlm.interleave import InterleaveConfig, make_documents
from spiritlm.units_jsonl import find_units, read_units
from spiritlm.text_tokenizer import SpiritTextTokenizer, train_sentencepiece

FIXTURES = Path(__file__).parent / "data" / "data_pipeline"
MANIFEST = FIXTURES / "manifest.jsonl"
UNITS = FIXTURES / "units.jsonl"
SMALL_SPANS = InterleaveConfig(text_span_min=3, text_span_max=8, speech_span_min=2, speech_span_max=5)


def digest(directory: Path) -> dict[str, str]:
    """sha256 of every shard and index file (summary.json holds timings and is left out)."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != "summary.json"
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("built") / "w2"
    summary = build_dataset(MANIFEST, UNITS, out, interleave=SMALL_SPANS, workers=2, seed=3, chunk_size=4, vocab_size=300)
    return out, summary


def test_summary(built):
    out, summary = built
    assert json.loads((out / "summary.json").read_text()) == summary
    subsets = summary["subsets"]
    assert summary["utterances"] == 24
    assert subsets["text"]["documents"] == 24
    assert subsets["speech"]["documents"] == 23 and subsets["speech"]["skipped"] == {"missing_units": 1}
    assert subsets["interleaved"]["skipped"] == {"missing_units": 1, "word_outside_audio": 1}
    assert subsets["interleaved"]["documents"] == 22
    assert subsets["text"]["speech_tokens"] == 0 and subsets["speech"]["text_tokens"] == 0
    assert subsets["interleaved"]["speech_text_ratio"] > 0
    index = TokenDir(out)
    for name, s in subsets.items():
        assert index[name].num_docs == s["documents"] and index[name].num_tokens == s["tokens"]
    assert summary["tokens"] == sum(s["tokens"] for s in subsets.values())


def test_shards_decode_to_the_documents(built):
    out, _ = built
    tokens = TokenDir(out)
    tok = SpiritTextTokenizer.load(tokens.tokenizer_path)
    assert tokens.vocab_size == tok.vocab_size and tokens.eos_id == tok.eos_id
    units = read_units(UNITS)
    expected: dict[str, list[tuple[str, str]]] = {"speech": [], "text": [], "interleaved": []}
    for utt in read_manifest_utterances(MANIFEST):
        for doc in make_documents(utt, find_units(units, utt), SMALL_SPANS, seed=3)[0]:
            expected[doc.subset].append((doc.id, doc.text))
    for name, docs in expected.items():
        sub = tokens[name]
        assert sub.num_docs == len(docs)
        for i, (doc_id, text) in enumerate(docs):
            assert sub.doc_id(i) == doc_id
            assert np.array_equal(sub.doc(i), tok.encode(text))
            assert tok.decode(sub.doc(i)) == text


def test_same_seed_same_shards_whatever_the_workers(built, tmp_path):
    out, _ = built
    one = tmp_path / "w1"
    build_dataset(MANIFEST, UNITS, one, interleave=SMALL_SPANS, workers=1, seed=3, chunk_size=4, vocab_size=300)
    assert digest(one) == digest(out)
    other = tmp_path / "seed4"
    build_dataset(
        MANIFEST, UNITS, other, interleave=SMALL_SPANS, workers=2, seed=4, chunk_size=4, vocab_size=300,
        text_tokenizer=str(out / "tokenizer.model"),
    )
    a, b = digest(out), digest(other)
    assert a["interleaved/interleaved_00000.bin"] != b["interleaved/interleaved_00000.bin"]
    assert a["speech/speech_00000.bin"] == b["speech/speech_00000.bin"]


def test_expressive_split_and_loader(tmp_path):
    out = tmp_path / "ex"
    summary = build_dataset(
        MANIFEST, UNITS, out, interleave=InterleaveConfig(expressive=True, text_span_min=3, text_span_max=6,
        speech_span_min=2, speech_span_max=4), split="valid", workers=1, vocab_size=300,
    )
    assert summary["utterances"] == 4 and summary["vocab_size"] % 256 == 0
    tok = SpiritTextTokenizer.load(out / "tokenizer.model")
    assert tok.expressive
    tokens = TokenDir(out)
    assert "[St" in tok.decode(tokens["speech"].doc(0)) and "[Pi" in tok.decode(tokens["speech"].doc(0))
    batch = next(PackedLoader(LoaderConfig(str(out), seq_len=128, batch_size=2)))
    assert batch["input_ids"].max() < tok.vocab_size


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="no utterances in split 'nope'"):
        build_dataset(MANIFEST, UNITS, tmp_path / "x", split="nope")
    base = tmp_path / "base.model"
    SpiritTextTokenizer.train(["a b c"] * 50, 300).save(base)
    with pytest.raises(ValueError, match="expressive build needs pitch and style"):
        build_dataset(MANIFEST, UNITS, tmp_path / "y", text_tokenizer=str(base), interleave=InterleaveConfig(expressive=True))
    small = tmp_path / "small.model"
    SpiritTextTokenizer.train(["a b c"] * 50, 300, num_hubert=64).save(small)
    with pytest.raises(ValueError, match=r"units\.jsonl:1: hubert id \d+ is beyond the 64 hubert units"):
        build_dataset(MANIFEST, UNITS, tmp_path / "z", text_tokenizer=str(small), workers=2, chunk_size=4)


def test_cli_build_inspect_and_tokenizer(tmp_path, capsys):
    out = tmp_path / "cli"
    main(["data", "build", "--manifest", str(MANIFEST), "--units", str(UNITS), "--out", str(out), "--workers", "1",
          "--text_span_min", "3", "--text_span_max", "8", "--speech_span_min", "2", "--speech_span_max", "5",
          "--vocab_size", "300", "--progress", "false"])
    printed = capsys.readouterr().out
    assert "interleaved: 22 documents" in printed and "word_outside_audio 1" in printed
    main(["data", "inspect", str(out), "--num_examples", "1", "--color", "never"])
    printed = capsys.readouterr().out
    assert "<<SPEECH>> [Hu" in printed and "<<TEXT>> " in printed and '"speech_text_ratio"' in printed
    assert "== interleaved: 22 documents" in printed
    model = tmp_path / "t.model"
    main(["data", "train-text-tokenizer", "--out", str(model), "--manifest", str(MANIFEST), "--vocab_size", "300",
          "--expressive", "true"])
    info = json.loads(capsys.readouterr().out)
    assert info["vocab_size"] == SpiritTextTokenizer.load(model).vocab_size and info["units"]["style"] == 100
    extended = tmp_path / "t2.model"
    text = tmp_path / "text.txt"
    text.write_text("the cat sat on the mat\n" * 30)
    main(["data", "train-text-tokenizer", "--out", str(tmp_path / "t1.model"), "--text_file", str(text), "--vocab_size", "300"])
    assert json.loads(capsys.readouterr().out)["units"]["pitch"] == 0
    base = tmp_path / "base.model"  # a text-only model, as LLaMA-2's tokenizer.model
    base.write_bytes(train_sentencepiece(text.read_text().splitlines(), 300))
    main(["data", "train-text-tokenizer", "--out", str(extended), "--base_model", str(base)])
    info = json.loads(capsys.readouterr().out)
    assert info["text_pieces"] == spm.SentencePieceProcessor(model_file=str(base)).vocab_size()
    with pytest.raises(ValueError, match="already has"):
        SpiritTextTokenizer.from_base_model(extended)


@pytest.mark.parametrize("sub", ["build", "inspect", "train-text-tokenizer"])
def test_cli_help(sub, capsys):
    with pytest.raises(SystemExit) as e:
        main(["data", sub, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "usage:" in text
    if sub == "build":
        for opt in ("--manifest", "--units", "--out", "--expressive", "--text_tokenizer", "--split", "--workers", "--seed"):
            assert opt in text
        assert "units JSONL" in text  # docstring Args reach the help


def test_random_inputs_build_cleanly(tmp_path):
    from spiritlm.corpus.manifest import read_manifest
    from spiritlm.data.synthetic import random_manifest, random_units

    manifest = random_manifest(tmp_path / "m.jsonl", 30, seed=1)
    utts = read_manifest(manifest)
    units = random_units(utts, tmp_path / "u.jsonl", seed=1)
    recs = [json.loads(line) for line in units.read_text().splitlines()]
    assert [r["id"] for r in recs] == [u.id for u in utts]
    for r, u in zip(recs, utts):
        assert len(r["hubert"].split()) == int(round(u.duration * 16000)) // 640
        assert len(r["style"].split()) == -(-u.duration // 1)
    cfg = InterleaveConfig(expressive=True, group_words=50)
    summary = build_dataset(manifest, units, tmp_path / "out", interleave=cfg, workers=1, vocab_size=300)
    assert summary["subsets"]["speech"]["skipped"] == {}
    assert summary["subsets"]["interleaved"]["documents"] > 0


def test_extra_text_joins_the_text_subset(tmp_path):
    from spiritlm.corpus.text_sources import text_corpus

    extra = text_corpus(50, seed=1)
    assert text_corpus(50, seed=1) == extra and text_corpus(60, seed=1)[:50] == extra != text_corpus(50, seed=2)
    path = tmp_path / "extra.txt"
    path.write_text("\n".join(extra) + "\n\n")
    out = tmp_path / "b"
    summary = build_dataset(MANIFEST, UNITS, out, interleave=SMALL_SPANS, workers=1, seed=3, vocab_size=400, extra_text=path)
    assert summary["extra_text_documents"] == 50
    assert summary["subsets"]["text"]["documents"] == 24 + 50
    assert summary["subsets"]["speech"]["documents"] == 23  # other subsets unchanged
    tok = SpiritTextTokenizer.load(out / "tokenizer.model")
    sub = TokenDir(out)["text"]
    ids = [sub.doc_id(i) for i in range(sub.num_docs)]
    last = sub.doc(ids.index("extra:49"))
    assert tok.decode(last) == "[Text]" + extra[49]
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(ValueError, match=r"empty\.txt: no text documents"):
        build_dataset(MANIFEST, UNITS, tmp_path / "c", extra_text=empty, vocab_size=400)


def test_a_unit_beyond_the_tokenizer_is_named_by_file_and_line(tmp_path, capsys):
    """Issue 18 item 13: `[Hu100000]` in a units file was `ValueError: speech document of … (unexpected)`
    with no file or line; it is now one line naming the units file's line and the flags."""
    lines = UNITS.read_text().splitlines()
    rec = json.loads(lines[2])
    ids = rec["hubert"].split()
    ids[3] = "100000"
    rec["hubert"] = " ".join(ids)
    lines[2] = json.dumps(rec)
    units = tmp_path / "u.jsonl"
    units.write_text("\n".join(lines) + "\n")
    with pytest.raises(SystemExit):
        main(["data", "build", "--manifest", str(MANIFEST), "--units", str(units), "--out", str(tmp_path / "o"),
              "--workers", "1", "--progress", "false"])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unexpected" not in err[0], err
    assert f"{units}:3: hubert id 100000 is beyond the 501 hubert units" in err[0] and "--units" in err[0], err
    assert not (tmp_path / "o").exists()
