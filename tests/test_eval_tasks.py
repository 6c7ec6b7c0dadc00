"""Eval tasks: prompt construction (k shots, no target leak), public layouts from small fixtures,
end-to-end runs of asr / ic / zeroshot on the tiny test model, reproducible output files, CLI errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import wave

import numpy as np
import pytest

from spiritlm.errors import UserError
from spiritlm.evals.asr import AsrConfig, build_asr_prompt, run_asr
from spiritlm.evals.common import EvalModel, ManifestInputs, draw_shots
from spiritlm.evals.engine import clean_answer
from spiritlm.evals.ic import IcConfig, label_name, run_ic
from spiritlm.evals.zeroshot import (
    ZeroshotConfig,
    ZeroshotInputs,
    _score_groups,
    read_sets,
    read_storycloze_spoken,
    read_storycloze_written,
    read_zerospeech_set,
    run_zeroshot,
)
from spiritlm.generation import SpiritLM
from fixtures import tiny_hf_llama
from spiritlm.data.synthetic import _VERBS, toy_tokenizer, toy_utterances


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    tok = toy_tokenizer(d, num_hubert=64)
    return tiny_hf_llama(tmp_path_factory.mktemp("hf"), vocab_size=tok.vocab_size, seed=5, max_position_embeddings=640,
                         tokenizer_model=d / "tokenizer.model")


@pytest.fixture(scope="module")
def model(tiny):
    return EvalModel(lm=SpiritLM.from_pretrained(tiny), name="tiny")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A manifest of toy utterances (train/test, intents = the sentence's verb) and their units."""
    d = tmp_path_factory.mktemp("corpus")
    utts, units = toy_utterances(60, num_hubert=64, seed=3)
    lines, unit_lines = [], []
    for i, u in enumerate(utts):
        verb = next(w for w in u.text.split() if w in _VERBS)
        lines.append(json.dumps({
            "id": u.id, "audio": f"wavs/{u.id}.wav", "sample_rate": 16000, "duration": u.duration, "speaker": "s0",
            "style": "neutral", "text": u.text, "words": [{"word": w.word, "start": w.start, "end": w.end} for w in u.words],
            "intent": f"{verb}_it", "split": "test" if i % 4 == 0 else "train",
        }))
        unit_lines.append(json.dumps({"id": u.id, **units[u.id]}))
    (d / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    (d / "units.jsonl").write_text("\n".join(unit_lines[:-1]) + "\n")  # the last utterance has no units
    return d


def test_load_eval_model(tiny, tmp_path):
    from spiritlm.evals.common import load_eval_model

    m = load_eval_model(str(tiny))
    assert m.lm.config.max_seq_len == 640 and m.vocoder is None and m.speech_tokenizer is None
    assert m.expressive is False and m.name == str(tiny)
    with pytest.raises(UserError, match="no such model directory"):
        load_eval_model(str(tmp_path / "nope"))
    with pytest.raises(UserError, match=r"\(--speech_tokenizer\)"):
        load_eval_model(str(tiny), speech_tokenizer=str(tmp_path))


# ---------------------------------------------------------------------------------------------
# prompt construction
# ---------------------------------------------------------------------------------------------


def test_asr_prompt_format_and_shots():
    assert build_asr_prompt([("[Hu1][Hu2]", "hi there"), ("[Hu4]", "yes")], "[Hu3]") == \
        "[Speech][Hu1][Hu2][Text]hi there[Speech][Hu4][Text]yes[Speech][Hu3][Text]"
    pool = [{"id": f"u{i}", "text": f"t{i}"} for i in range(30)]
    for k in (0, 1, 10):
        shots = draw_shots(pool, k, seed=1, target_id="u5")
        assert len(shots) == k and all(s["id"] != "u5" for s in shots)


def test_clean_answer_stops_at_markers(model):
    tok = model.lm.tokenizer
    ids = tok.encode("the cat[Speech][Hu3]")
    stop = [tok.text_marker_id, tok.speech_marker_id]
    assert clean_answer(tok, ids, stop) == "the cat"
    assert clean_answer(tok, tok.encode("a dog") + [tok.eos_id] + tok.encode("x"), stop) == "a dog"


def test_asr_end_to_end_no_leak_and_reproducible(model, corpus, tmp_path, capsys):
    m, u = corpus / "manifest.jsonl", corpus / "units.jsonl"
    res = run_asr(model, ManifestInputs(m, u), AsrConfig(shots=3, seed=0, max_new_tokens=12, batch_size=4), tmp_path / "a", progress=False)
    line = capsys.readouterr().out
    assert "[eval asr] wer=" in line and "cer=" in line and "tokens_per_s=" in line
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    for name in ("wer", "cer"):
        rec = metrics[name]
        assert set(rec) >= {"value", "ci95", "chance", "n"} and rec["n"] == 15
        assert rec["ci95"][0] <= rec["value"] <= rec["ci95"][1]
        assert 0.0 < rec["chance"]
    preds = [json.loads(x) for x in (tmp_path / "a" / "predictions.jsonl").read_text().splitlines()]
    train_ids = {json.loads(x)["id"] for x in m.read_text().splitlines() if json.loads(x)["split"] == "train"}
    assert len(preds) == 15
    for p in preds:
        assert set(p) >= {"id", "shot_ids", "seed", "output", "score", "reference"}
        assert len(p["shot_ids"]) == 3 and p["id"] not in p["shot_ids"]
        assert set(p["shot_ids"]) <= train_ids
    # the recorded WER is the one recomputed from the predictions
    errors = sum(p["score"]["word_errors"] for p in preds)
    words = sum(p["score"]["ref_words"] for p in preds)
    assert metrics["wer"]["value"] == pytest.approx(errors / words, abs=1e-6)
    run_asr(model, ManifestInputs(m, u), AsrConfig(shots=3, seed=0, max_new_tokens=12, batch_size=2), tmp_path / "b", progress=False)
    for name in ("metrics.json", "predictions.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    run_asr(model, ManifestInputs(m, u), AsrConfig(shots=3, seed=1, max_new_tokens=12), tmp_path / "c", progress=False)
    other = [json.loads(x)["shot_ids"] for x in (tmp_path / "c" / "predictions.jsonl").read_text().splitlines()]
    assert other != [p["shot_ids"] for p in preds]
    assert res.task == "asr" and metrics["config"]["skipped"] == 0


def test_asr_clamps_shots_to_context(model, corpus, tmp_path):
    run_asr(model, ManifestInputs(corpus / "manifest.jsonl", corpus / "units.jsonl"),
            AsrConfig(shots=40, max_new_tokens=12, max_items=3), tmp_path, progress=False)
    cfg = json.loads((tmp_path / "metrics.json").read_text())["config"]
    assert cfg["shots"] == 40 and 0 < cfg["shots_used_max"] < 40  # a 640-token context holds only a few
    for p in map(json.loads, (tmp_path / "predictions.jsonl").read_text().splitlines()):
        assert p["prompt_tokens"] + 12 <= model.lm.config.max_seq_len


def test_asr_budget_follows_each_reference_under_the_ceiling(model, corpus, tmp_path):
    from spiritlm.evals.engine import answer_budget

    run_asr(model, ManifestInputs(corpus / "manifest.jsonl", corpus / "units.jsonl"), AsrConfig(shots=1, max_items=4), tmp_path,
            progress=False)
    cfg = json.loads((tmp_path / "metrics.json").read_text())["config"]
    assert cfg["max_new_tokens"] == 384 and cfg["hit_budget"] >= 0
    tok = model.lm.tokenizer
    for p in map(json.loads, (tmp_path / "predictions.jsonl").read_text().splitlines()):
        assert p["budget"] == answer_budget(len(tok.encode(p["reference"])), 384) < 384
        assert p["prompt_tokens"] + p["budget"] <= model.lm.config.max_seq_len  # the shots left room for it


def test_ic_end_to_end(model, corpus, tmp_path):
    res = run_ic(model, ManifestInputs(corpus / "manifest.jsonl", corpus / "units.jsonl"), IcConfig(shots=4, seed=0, batch_size=8),
                 tmp_path, progress=False)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    labels = metrics["labels"]
    acc = metrics["accuracy"]
    assert acc["chance"] == pytest.approx(1 / len(labels), abs=1e-6) and acc["n"] == 15
    assert 0 <= acc["majority"] <= 1 and acc["majority_label"] in labels
    matrix = np.array(metrics["confusion_matrix"]["matrix"])
    assert matrix.shape == (len(labels), len(labels)) and matrix.sum() == 15
    assert np.trace(matrix) / 15 == pytest.approx(acc["value"], abs=1e-6)
    preds = [json.loads(x) for x in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    for p in preds:
        assert len(p["shot_ids"]) == 4 and p["id"] not in p["shot_ids"]
        assert set(p["score"]) == set(labels)
        assert p["output"] == max(labels, key=lambda lab: (p["score"][lab], -labels.index(lab)))
    assert "accuracy_generation" in metrics and res.predictions == preds
    assert label_name("set_alarm") == "set alarm"


def test_units_outside_the_vocabulary_are_a_user_error(model, corpus, tmp_path):
    units = tmp_path / "u.jsonl"
    rows = [json.loads(x) for x in (corpus / "units.jsonl").read_text().splitlines()]
    units.write_text("".join(json.dumps({**r, "hubert": "500 501"}) + "\n" for r in rows))  # the toy vocabulary has 64
    with pytest.raises(UserError, match=r"cannot encode the units .*\[Hu500\]"):
        run_asr(model, ManifestInputs(corpus / "manifest.jsonl", units), AsrConfig(), tmp_path / "o", progress=False)


def test_missing_split_is_a_user_error(model, corpus, tmp_path):
    with pytest.raises(UserError, match="no utterance of split 'dev'"):
        run_asr(model, ManifestInputs(corpus / "manifest.jsonl", corpus / "units.jsonl"), AsrConfig(split="dev"), tmp_path,
                progress=False)


# ---------------------------------------------------------------------------------------------
# zero-shot: public layouts from small fixtures
# ---------------------------------------------------------------------------------------------


def _wav(path, seconds=0.2):
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(np.zeros(int(16000 * seconds), dtype=np.int16).tobytes())


def _csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


@pytest.fixture()
def public_sets(tmp_path):
    """Tiny folders in the ZeroSpeech 2021 (sWUGGY, sBLIMP) and StoryCloze layouts, with units.jsonl."""
    lex = tmp_path / "lexical" / "dev"
    syn = tmp_path / "syntactic" / "dev"
    sc = tmp_path / "storycloze" / "spoken"
    for d in (lex, syn, sc):
        d.mkdir(parents=True)
    _csv(lex / "gold.csv", ["id", "filename", "voice", "frequency", "word", "correct"],
         [[1, "aAb", "v1", 10, "river", 1], [1, "aAc", "v1", 10, "rivel", 0],
          [2, "bBb", "v1", 3, "apple", 1], [2, "bBc", "v1", 3, "apsle", 0]])
    _csv(syn / "gold.csv", ["id", "filename", "type", "subtype", "correct"],
         [[7, "s1", "morphology", "agreement", 1], [7, "s2", "morphology", "agreement", 0]])
    units = []
    for stem, hub in (("aAb", "1 1 2 3"), ("aAc", "1 2 5"), ("bBb", "4 4 6"), ("bBc", "4 7 6"), ("s1", "9 8 7 6"),
                      ("s2", "6 7 8 9")):
        folder = lex if stem[0] in "ab" else syn
        _wav(folder / f"{stem}.wav")
        units.append((folder, json.dumps({"id": stem, "hubert": hub})))
    for folder in (lex, syn):
        (folder / "units.jsonl").write_text("\n".join(line for f, line in units if f == folder) + "\n")
    for story in ("st1", "st2"):
        _wav(sc / f"{story}_correct.wav")
        _wav(sc / f"{story}_incorrect.wav")
    (sc / "units.jsonl").write_text("\n".join(json.dumps({"id": k, "hubert": h}) for k, h in
                                              (("st1_correct", "3 4"), ("st1_incorrect", "3 9"), ("st2_correct", "5 6 7"),
                                               ("st2_incorrect", "5 6 2"))) + "\n")
    _csv(tmp_path / "storycloze" / "written.csv",
         ["InputStoryid", "InputSentence1", "InputSentence2", "InputSentence3", "InputSentence4",
          "RandomFifthSentenceQuiz1", "RandomFifthSentenceQuiz2", "AnswerRightEnding"],
         [["x1", "the cat saw a red ball.", "it was happy.", "", "", "the cat played.", "the ball ate soup.", 1]])
    return tmp_path


def test_read_public_layouts(public_sets):
    lex = read_zerospeech_set(public_sets / "lexical" / "dev", "lexical")
    spoken = [c for c in lex if c.modality == "spoken"]
    written = [c for c in lex if c.modality == "written"]
    assert [c.key for c in spoken] == ["aAb", "aAc", "bBb", "bBc"] and [c.correct for c in spoken] == [True, False] * 2
    assert spoken[0].audio.endswith("lexical/dev/aAb.wav") and spoken[0].group == "1/v1"
    assert [c.text for c in written] == ["river", "rivel", "apple", "apsle"]
    syn = read_zerospeech_set(public_sets / "syntactic" / "dev", "syntactic")
    assert {c.modality for c in syn} == {"spoken"} and syn[0].subtype == "agreement"  # no text column: spoken only
    sc = read_storycloze_spoken(public_sets / "storycloze" / "spoken")
    assert [(c.group, c.correct) for c in sc] == [("st1", True), ("st1", False), ("st2", True), ("st2", False)]
    w = read_storycloze_written(public_sets / "storycloze" / "written.csv")
    assert w[0].text == "the cat saw a red ball. it was happy. the cat played." and w[0].correct
    assert not w[1].correct and w[1].text.endswith("the ball ate soup.")
    assert set(read_sets(public_sets)) == {"lexical", "syntactic", "storycloze"}


def test_layout_errors_name_file_and_line(tmp_path):
    d = tmp_path / "lexical" / "dev"
    d.mkdir(parents=True)
    _csv(d / "gold.csv", ["id", "filename", "word", "correct"], [[1, "a", "x", 1]])
    with pytest.raises(UserError, match=r"gold.csv:1: missing column\(s\) voice, frequency"):
        read_zerospeech_set(d, "lexical")
    _csv(d / "gold.csv", ["id", "filename", "voice", "frequency", "word", "correct"],
         [[1, "a", "v", 1, "x", 1], [1, "b", "v", 1, "y", "yes"]])
    with pytest.raises(UserError, match=r"gold.csv:3: 'correct' must be 0 or 1"):
        read_zerospeech_set(d, "lexical")
    _csv(d / "gold.csv", ["id", "filename", "voice", "frequency", "word", "correct"],
         [[1, "a", "v", 1, "x", 1], [1, "b", "v", 1, "y", 1]])
    with pytest.raises(UserError, match=r"gold.csv:2: group '1/v' has 2 rows and 2 correct"):
        read_zerospeech_set(d, "lexical")
    sc = tmp_path / "sc"
    sc.mkdir()
    _wav(sc / "s_correct.wav")
    with pytest.raises(UserError, match="lacks its incorrect ending"):
        read_storycloze_spoken(sc)


def test_group_scoring_known_accuracy():
    from spiritlm.evals.zeroshot import Candidate

    cands = [Candidate("lexical", "written", g, f"{g}{k}", k == "w") for g in "abc" for k in "wn"]
    # a: word wins; b: non-word wins; c: tie -> half credit
    res = _score_groups(cands, [-1.0, -2.0, -3.0, -1.0, -5.0, -5.0])
    assert [r["credit"] for r in res] == [1.0, 0.0, 0.5]
    assert all(r["chance"] == 0.5 for r in res)


def test_zeroshot_end_to_end_on_public_layouts(model, public_sets, tmp_path):
    res = run_zeroshot(model, ZeroshotInputs(sets=public_sets), ZeroshotConfig(seed=0, batch_size=3), tmp_path / "a", progress=False)
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    for name, n in (("lexical_spoken", 2), ("lexical_written", 2), ("syntactic_spoken", 1), ("storycloze_spoken", 2),
                    ("storycloze_written", 1)):
        rec = metrics[name]
        assert rec["n"] == n and rec["chance"] == 0.5 and 0 <= rec["value"] <= 1
    assert "syntactic_written" not in metrics
    preds = [json.loads(x) for x in (tmp_path / "a" / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 8
    # each prediction's output is the candidate with the highest recorded score, scored as <s>[Speech]/[Text] + item
    lm, tok = model.lm, model.lm.tokenizer
    lex_w = next(p for p in preds if p["id"] == "lexical_written/1/v1")
    ref = lm.score_continuations([[tok.bos_id, tok.text_marker_id]] * 2, [tok.encode("river"), tok.encode("rivel")])
    assert lex_w["score"]["aAb"] == pytest.approx(ref[0].sum_logprob, abs=1e-4)
    assert lex_w["score"]["aAc"] == pytest.approx(ref[1].sum_logprob, abs=1e-4)
    assert lex_w["output"] == ("aAb" if ref[0].sum_logprob >= ref[1].sum_logprob else "aAc")
    lex_s = next(p for p in preds if p["id"] == "lexical_spoken/1/v1")
    ref = lm.score_continuations([[tok.bos_id, tok.speech_marker_id]], [tok.encode("[Hu1][Hu2][Hu3]")])
    assert lex_s["score"]["aAb"] == pytest.approx(ref[0].sum_logprob, abs=1e-4)  # units are deduplicated
    run_zeroshot(model, ZeroshotInputs(sets=public_sets), ZeroshotConfig(seed=0, batch_size=3), tmp_path / "b", progress=False)
    for name in ("metrics.json", "predictions.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert res.task == "zeroshot"


def test_spoken_items_without_units_or_tokenizer_are_noted(model, public_sets, tmp_path):
    (public_sets / "lexical" / "dev" / "units.jsonl").unlink()
    run_zeroshot(model, ZeroshotInputs(sets=public_sets), ZeroshotConfig(tasks=["lexical"]), tmp_path, progress=False)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert "lexical_spoken" not in metrics and "speech_tokenizer" in metrics["notes"]["lexical_spoken"]
    assert metrics["lexical_written"]["n"] == 2


def test_pseudo_words_and_violations():
    import random

    from spiritlm.corpus.zeroshot_sets import perturb_word, violate_sentence

    rng = random.Random(0)
    lexicon = {"river", "rover", "liver"}
    for _ in range(20):
        fake = perturb_word("river", rng, lexicon)
        assert fake is not None and fake not in lexicon and len(fake) == 5
        diff = [(a, b) for a, b in zip("river", fake) if a != b]
        assert len(diff) == 1
        a, b = diff[0]
        assert (a in "aeiou") == (b in "aeiou")
    verbs = {"walks": "walk", "walk": "walks"}
    seen = set()
    for seed in range(30):
        bad, kind = violate_sentence(["the", "man", "walks", "and", "it", "is", "late"], random.Random(seed), verbs)
        seen.add(kind)
        assert bad != ["the", "man", "walks", "and", "it", "is", "late"]
        if kind == "word_order":
            assert bad[:2] == ["man", "the"]
        elif kind == "agreement_be":
            assert bad[5] == "are"
        else:
            assert bad[2] == "walk"
    assert seen == {"word_order", "agreement_be", "agreement_verb"}
    assert violate_sentence(["hello"], rng, verbs) is None


def test_synthetic_sets_are_readable(corpus, tmp_path):
    from spiritlm.corpus.zeroshot_sets import make_synthetic_sets

    (corpus / "wavs").mkdir(exist_ok=True)
    out = make_synthetic_sets(tmp_path / "sets", corpus / "manifest.jsonl", num_pairs=3, num_voices=2)
    sets = read_sets(out)
    assert set(sets) == {"lexical", "syntactic", "storycloze"}
    for task, cands in sets.items():
        assert {c.modality for c in cands} == {"spoken", "written"}
        for c in cands:
            if c.modality == "spoken":
                with wave.open(c.audio) as w:
                    assert w.getframerate() == 16000 and w.getnframes() > 1600


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def test_cli_bad_manifest_is_one_line(tiny, tmp_path):
    bad = tmp_path / "m.jsonl"
    bad.write_text("{oops\n")
    (tmp_path / "u.jsonl").write_text("")
    r = subprocess.run([sys.executable, "-m", "spiritlm.cli", "eval", "asr", "--model", str(tiny), "--manifest", str(bad),
                        "--units", str(tmp_path / "u.jsonl"), "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "m.jsonl:1:" in lines[0] and "(--manifest)" in lines[0]


@pytest.mark.parametrize("task", ["asr", "ic", "tts"])
def test_units_of_another_corpus_with_overlapping_ids_are_refused(task, tiny, corpus, tmp_path, capsys):
    """Issue 18 item 6: `eval asr` with a units file made from another corpus whose ids overlap the
    manifest's ran (n=1 of 11, exit 0). Units carry their audio path and length: both are checked
    against the manifest before the model loads, and a mismatch names both files."""
    from spiritlm.cli import main

    manifest = corpus / "manifest.jsonl"
    rows = [json.loads(ln) for ln in (corpus / "units.jsonl").read_text().splitlines()]
    other = tmp_path / "other_units.jsonl"  # the same ids, made from another corpus' audio
    other.write_text("".join(json.dumps({**r, "audio": f"/elsewhere/corpus/wavs/{r['id']}.wav"}) + "\n" for r in rows))
    argv = ["eval", task, "--model", str(tiny), "--manifest", str(manifest), "--out", str(tmp_path / "o"), "--max_items", "1"]
    with pytest.raises(SystemExit):
        main([*argv, "--units", str(other)])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(other) in err[0] and str(manifest) in err[0] and "/elsewhere/corpus/wavs/" in err[0], err
    assert "(--units/--manifest)" in err[0] and not (tmp_path / "o").exists()

    # no audio path in the units, but lengths that are not the manifest's durations (another corpus' utterances)
    shifted = tmp_path / "shifted_units.jsonl"
    shifted.write_text("".join(json.dumps({**{k: v for k, v in r.items() if k != "audio"}, "id": rows[(i + 1) % len(rows)]["id"]})
                               + "\n" for i, r in enumerate(rows)))
    with pytest.raises(SystemExit):
        main([*argv, "--units", str(shifted)])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "unit frames" in err and "the manifest's audio lasts" in err and str(shifted) in err, err


def test_units_made_from_the_manifests_audio_pass_the_check(corpus):
    from spiritlm.evals.common import check_units_match, load_manifest_items
    from spiritlm.units_jsonl import load_units

    items = load_manifest_items(corpus / "manifest.jsonl")
    rows = [json.loads(ln) for ln in (corpus / "units.jsonl").read_text().splitlines()]
    same = corpus / "units_with_audio.jsonl"  # as `spiritlm tokenize` writes them: absolute audio paths
    same.write_text("".join(json.dumps({**r, "audio": str(corpus / "wavs" / f"{r['id']}.wav")}) + "\n" for r in rows))
    check_units_match(items, load_units(same), corpus / "manifest.jsonl", same)
    check_units_match(items, load_units(corpus / "units.jsonl"), corpus / "manifest.jsonl", corpus / "units.jsonl")
