"""STSP as Meta's released script runs it: the ``meta`` protocol's prompts, shot draw and decoding
settings, Meta-layout scoring (``stsp-score``), the WAV check, and Meta-style Hugging Face judges."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf

from spiritlm.errors import UserError
from spiritlm.evals import stsp as S
from spiritlm.evals.stsp_score import check_manifest_audio, score_meta

META = S.PROTOCOLS["meta"]


def _item(i, label):
    return S.StspItem(f"u{i}", label, text=f"text {i}", speech=f"[Hu{i}][Hu{i + 1}]",
                      halves={"text": (f"a{i}", f"b{i}"), "speech": (f"[Hu{i}]", f"[Hu{i + 50}]")})


# ---------------------------------------------------------------------------------------------
# The protocol's settings and prompts
# ---------------------------------------------------------------------------------------------


def test_meta_protocol_holds_the_settings_of_metas_script():
    assert (META.max_new_tokens_text, META.max_new_tokens_speech) == (50, 300)
    assert (META.temperature, META.top_p, META.top_k, META.do_sample, META.min_new_tokens) == (0.8, 0.95, 50, True, 0)
    assert META.speaker == 2 and META.shot_separator == "\n" and META.inner_markers and META.shot_draw == "meta"
    assert META.text_stops == "eos" and META.speech_eos is False
    assert S.StspConfig().protocol == "meta"  # the default
    cfg = S.StspConfig(protocol="ours", temperature=0.9, top_k=0)
    assert cfg.settings().temperature == 0.9 and cfg.overrides() == {"temperature": 0.9}  # top_k 0 is ours already
    with pytest.raises(UserError, match=r"unknown STSP protocol 'x'.*\(--protocol\)"):
        S.StspConfig(protocol="x").settings()


def test_meta_prompts_per_direction_zero_and_few_shot_equal_hand_written_strings():
    target = _item(1, "positive")
    # zero-shot: Spiritlm._build_prompt (marker of the output modality only when it changes)
    assert S.build_stsp_prompt("t2t", target, (), META) == "[Text]text 1"
    assert S.build_stsp_prompt("t2s", target, (), META) == "[Text]text 1[Speech]"
    assert S.build_stsp_prompt("s2t", target, (), META) == "[Speech][Hu1][Hu2][Text]"
    assert S.build_stsp_prompt("s2s", target, (), META) == "[Speech][Hu1][Hu2]"
    # few-shot: 3 examples for k = 2 (3 * ceil(2/3)), one per sentiment, negative -> neutral -> positive,
    # each "[Src]prompt[Tgt]continuation" then a newline; T->T and S->S keep their inner marker
    pool = [_item(10, "positive"), _item(11, "negative"), _item(12, "neutral")]
    shots = S.draw_meta_shots(pool, 2, seed=0, direction="t2t", need=["text"])
    assert [s.label for s in shots] == ["negative", "neutral", "positive"]
    assert S.build_stsp_prompt("t2t", target, shots, META) == (
        "[Text]a11[Text]b11\n[Text]a12[Text]b12\n[Text]a10[Text]b10\n[Text]text 1[Text]")
    assert S.build_stsp_prompt("t2s", target, shots, META) == (
        "[Text]a11[Speech][Hu61]\n[Text]a12[Speech][Hu62]\n[Text]a10[Speech][Hu60]\n[Text]text 1[Speech]")
    assert S.build_stsp_prompt("s2t", target, shots, META) == (
        "[Speech][Hu11][Text]b11\n[Speech][Hu12][Text]b12\n[Speech][Hu10][Text]b10\n[Speech][Hu1][Hu2][Text]")
    assert S.build_stsp_prompt("s2s", target, shots, META) == (
        "[Speech][Hu11][Speech][Hu61]\n[Speech][Hu12][Speech][Hu62]\n[Speech][Hu10][Speech][Hu60]\n[Speech][Hu1][Hu2][Speech]")


def test_meta_shot_draw_is_three_ceil_k_over_three_grouped_once_per_direction():
    pool = [_item(i, ("positive", "negative", "neutral")[i % 3]) for i in range(30)]
    for k in (1, 3, 4, 9):
        shots = S.draw_meta_shots(pool, k, seed=7, direction="s2s", need=["speech"])
        per = math.ceil(k / 3)
        assert [s.label for s in shots] == ["negative"] * per + ["neutral"] * per + ["positive"] * per
        assert len({s.id for s in shots}) == 3 * per
        assert shots == S.draw_meta_shots(pool, k, seed=7, direction="s2s", need=["speech"])  # seeded
    assert S.draw_meta_shots(pool, 3, 7, "s2s", ["speech"]) != S.draw_meta_shots(pool, 3, 8, "s2s", ["speech"])
    assert S.draw_meta_shots(pool, 0, 7, "s2s", ["speech"]) == []
    with pytest.raises(ValueError, match="10 negative examples, 11 needed"):
        S.draw_meta_shots(pool, 31, 7, "t2t", ["text"])


def test_meta_masks_keep_newlines_ban_markers_and_speech_eos(tiny_lm):
    lm = tiny_lm
    tok = lm.tokenizer
    allowed, stops = S._stop_and_allowed(lm, "text", META)
    newline = tok.encode("a\nb")
    assert stops == [] and not allowed[tok.text_marker_id] and not allowed[tok.speech_marker_id] and allowed[tok.eos_id]
    assert all(allowed[i] for i in newline)  # newline pieces are text: generated, never a stop
    allowed, stops = S._stop_and_allowed(lm, "speech", META)
    assert stops == [] and not allowed[tok.eos_id] and not allowed[tok.text_marker_id]
    allowed, stops = S._stop_and_allowed(lm, "speech", S.PROTOCOLS["ours"])
    assert allowed[tok.eos_id] and tok.text_marker_id in stops and allowed[tok.text_marker_id]


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    from fixtures import tiny_hf_llama
    from spiritlm.data.synthetic import toy_tokenizer
    from spiritlm.generation import SpiritLM

    d = tmp_path_factory.mktemp("tinylm")
    tok = toy_tokenizer(d / "tok", num_hubert=64)
    tiny_hf_llama(d / "lm", vocab_size=tok.vocab_size, tokenizer_model=d / "tok" / "tokenizer.model", max_position_embeddings=512)
    lm = SpiritLM.from_pretrained(d / "lm")
    lm.folder = d / "lm"  # for the command-line test
    return lm


def test_meta_run_uses_the_whole_speech_budget_and_writes_metas_prediction_files(tiny_lm, tmp_path):
    import torch

    from spiritlm.judges import models as J
    from spiritlm.evals.common import EvalModel
    from spiritlm.vocoder import Vocoder, VocoderConfig
    from spiritlm.vocoder.model import UnitHifiGAN

    torch.manual_seed(0)
    vcfg = VocoderConfig.preset("tiny", num_units=64, num_pitch=0, num_style=0, num_speakers=1, embedding_dim=8,
                                upsample_initial_channel=32, resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3, 5]],
                                duration_hidden=8)
    model = EvalModel(lm=tiny_lm, vocoder=Vocoder(UnitHifiGAN(vcfg)), name="tiny")
    labels = ("positive", "negative", "neutral")
    # a Meta manifest: 6 records with emotions, one of them outside the map
    root = tmp_path / "stsp_data"
    root.mkdir()
    recs = [{"id": f"r{i}", "emotion": ("happy", "sad", "default")[i % 3], "wav_path": f"r{i}.wav", "asr": f"word {i} is here"}
            for i in range(6)] + [{"id": "r6", "emotion": "surprised", "wav_path": "r6.wav", "asr": "oh"}]
    (root / "records_emov_test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    units = {f"r{i}": {"hubert": " ".join(str((i * 7 + j) % 60) for j in range(12))} for i in range(7)}
    items, problems = S.read_meta_stsp(root / "records_emov_test.jsonl", units=units)
    assert len(items) == 6 and problems[0]["id"] == "r6"
    text_judge = J.TextSentimentJudge.fit([f"word {i} is here" for i in range(30)], [labels[i % 3] for i in range(30)])
    rng = np.random.default_rng(0)
    speech_judge = J.SpeechSentimentJudge.fit([rng.standard_normal(6000).astype(np.float32) * (0.05 + 0.1 * (i % 3)) for i in range(12)],
                                              [labels[i % 3] for i in range(12)])
    cfg = S.StspConfig(directions=("t2t", "s2s"), max_new_tokens_text=6, max_new_tokens_speech=9)
    inputs = S.StspInputs(items, text_judge=text_judge, speech_judge=speech_judge, meta_reference=root / "records_emov_test.jsonl")
    res = S.run_stsp(model, inputs, cfg, tmp_path / "out")
    speech = [r for r in res.predictions if r["direction"] == "s2s"]
    assert speech and all(r["n_tokens"] == 9 for r in speech)  # EOS banned: always the whole budget
    assert all(r["judged"] != S.EMPTY for r in res.predictions if r["direction"] == "t2t")  # empty text is classified too
    m = res.metrics
    assert m["config"]["settings"]["top_k"] == 50 and m["config"]["speaker_used"] == 0
    assert "speaker 2 asked, the vocoder has 1 speaker" in m["config"]["speaker_note"]
    assert m["config"]["protocol_overrides"] == {"max_new_tokens_text": 6, "max_new_tokens_speech": 9}
    lines = [json.loads(x) for x in (tmp_path / "out" / "pred_t2t.jsonl").read_text().splitlines()]
    assert lines == [{"id": r["id"], "pred": r["judged"]} for r in res.predictions if r["direction"] == "t2t"]
    # scored by Meta's rules: the out-of-map record is dropped; strict counts it wrong
    sc = m["meta_score"]["t2t"]
    correct = sum(r["score"] for r in res.predictions if r["direction"] == "t2t")
    assert sc["meta"]["n"] == 6 and sc["meta"]["correct"] == correct and sc["meta"]["dropped"]["out_of_map"] == 1
    assert sc["strict"]["n"] == 7 and sc["strict"]["correct"] == correct
    assert sc["meta_refuses"] == ["6 prediction lines for 7 reference lines"]


# ---------------------------------------------------------------------------------------------
# stsp-score: Meta's matching rules against an independent computation
# ---------------------------------------------------------------------------------------------

EMO = {"happy": "positive", "angry": "negative", "sad": "negative", "default": "neutral", "neutral": "neutral", "amused": "positive"}


def _reference_meta_accuracy(pred_lines, ref_lines, label):
    """Meta's eval_stsp.py rules, restated: dict of preds by id as written; per reference, exact label
    or mapped emotion, looked up by str(id); any failure leaves the reference out."""
    preds = {}
    for p in pred_lines:
        preds[p["id"]] = p["pred"]
    hits = []
    for ref in ref_lines:
        if label in ref:
            gold = ref[label]
        elif label == "sentiment" and "emotion" in ref and ref["emotion"] in EMO:
            gold = EMO[ref["emotion"]]
        else:
            continue
        if str(ref["id"]) not in preds:
            continue
        hits.append(preds[str(ref["id"])] == gold)
    return (sum(hits) / len(hits) if hits else None), len(hits)


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_stsp_score_follows_metas_rules_and_reports_the_strict_count(tmp_path, capsys):
    from spiritlm.cli import main

    refs = [
        {"id": 1, "emotion": "happy"}, {"id": 2, "emotion": "sad"}, {"id": 3, "emotion": "default"},
        {"id": 4, "emotion": "surprised"},  # outside the map: dropped by Meta
        {"id": 5, "emotion": "Happy"},  # capitalised emotion: outside the (case-sensitive) map
        {"id": 6, "sentiment": "Positive"},  # capitalised label: compared exactly, so wrong
        {"id": 7, "emotion": "angry"},  # its prediction is empty
        {"id": 8, "emotion": "amused"}, {"id": 8, "emotion": "amused"},  # duplicate reference id: scored twice
        {"id": 9, "emotion": "neutral"},  # no prediction
    ]
    preds = [
        {"id": "1", "pred": "positive"}, {"id": "2", "pred": "negative"}, {"id": "3", "pred": "positive"},
        {"id": "4", "pred": "positive"}, {"id": "5", "pred": "positive"}, {"id": "6", "pred": "positive"},
        {"id": "7", "pred": ""}, {"id": "8", "pred": "neutral"}, {"id": "8", "pred": "positive"},  # repeated: the last wins
        {"id": "nobody", "pred": "neutral"},  # matches nothing
    ]
    ref_p, pred_p = _write(tmp_path / "ref.jsonl", refs), _write(tmp_path / "pred.jsonl", preds)
    res = score_meta(pred_p, ref_p, "sentiment")
    acc, n = _reference_meta_accuracy(preds, refs, "sentiment")
    assert (res["meta"]["accuracy"], res["meta"]["n"]) == (pytest.approx(acc), n)
    assert n == 7 and res["meta"]["correct"] == 4  # 1, 2, 8, 8 right; 3, 6, 7 wrong
    assert res["meta"]["dropped"] == {"unknown_id": 1, "out_of_map": 2, "no_label": 0}
    assert res["strict"] == {"accuracy": pytest.approx(4 / 10), "correct": 4, "n": 10}
    assert res["duplicate_pred_ids"] == 1 and res["meta_refuses"] == ["1 repeated prediction ids"]

    # emotion-level scoring: the emotion compared as is, references without an emotion are left out
    res = score_meta(pred_p, ref_p, "emotion")
    acc, n = _reference_meta_accuracy(preds, refs, "emotion")
    assert (res["meta"]["accuracy"], res["meta"]["n"]) == (acc, n) == (0.0, 8)
    assert res["meta"]["dropped"]["no_label"] == 1

    # numeric prediction ids match nothing under Meta's rules; the strict count compares strings
    num = _write(tmp_path / "num.jsonl", [{"id": 1, "pred": "positive"}, {"id": 2, "pred": "negative"}])
    two = _write(tmp_path / "two.jsonl", refs[:2])
    res = score_meta(num, two)
    assert res["meta"]["n"] == 0 and res["meta"]["accuracy"] is None and res["strict"]["accuracy"] == 1.0
    assert _reference_meta_accuracy([{"id": 1, "pred": "positive"}], refs[:1], "sentiment") == (None, 0)

    main(["eval", "stsp-score", "--pred", str(pred_p), "--ref", str(ref_p), "--out", str(tmp_path / "s.json")])
    out = capsys.readouterr().out
    assert "meta_accuracy=0.5714 meta_n=7" in out and "strict_accuracy=0.4000 strict_n=10" in out
    assert "would refuse" in out and json.loads((tmp_path / "s.json").read_text())["meta"]["n"] == 7
    (tmp_path / "bad.jsonl").write_text('{"id": "1", "pred": "positive"}\n{"id": "2"}\n')
    with pytest.raises(SystemExit):
        main(["eval", "stsp-score", "--pred", str(tmp_path / "bad.jsonl"), "--ref", str(ref_p)])
    assert "bad.jsonl:2: a prediction line needs 'id' and 'pred' (--pred)" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Every WAV a manifest names, before any generation
# ---------------------------------------------------------------------------------------------


def test_wav_check_names_the_first_missing_file_and_the_count(tmp_path, capsys):
    from spiritlm.cli import main

    root = tmp_path / "stsp_data"
    root.mkdir()
    sf.write(root / "ok.wav", np.zeros(1600, np.float32), 16000)
    (root / "broken.wav").write_bytes(b"RIFF not a wav")
    recs = [{"id": 1, "emotion": "sad", "wav_path": "ok.wav"}, {"id": 2, "emotion": "sad", "wav_path": "gone.wav"},
            {"id": 3, "emotion": "happy", "wav_path": "broken.wav"}]
    man = _write(root / "records_emov_test.jsonl", recs)
    paths = S.meta_audio_paths(man)
    with pytest.raises(UserError, match=r"records_emov_test.jsonl:2: .*gone.wav missing; 2 of 3 WAVs"):
        check_manifest_audio(man, paths)
    assert check_manifest_audio(man, paths[:1]) == 1
    model = tmp_path / "model"
    model.mkdir()  # never loaded: the check comes first
    with pytest.raises(SystemExit):
        main(["eval", "stsp", "--model", str(model), "--manifest", str(man), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert "gone.wav missing; 2 of 3 WAVs the manifest names are missing or undecodable" in err


# ---------------------------------------------------------------------------------------------
# Meta-style Hugging Face judges (tiny random models, no downloads)
# ---------------------------------------------------------------------------------------------


def _tiny_text_classifier(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "day", "the", "is", "a", "very"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    tok = BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"))
    tok.save_pretrained(tmp_path / "tokenizer")
    cfg = BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                     max_position_embeddings=64, num_labels=3, id2label={0: "Negative", 1: "Neutral", 2: "Positive"},
                     label2id={"Negative": 0, "Neutral": 1, "Positive": 2})
    import torch

    torch.manual_seed(0)
    BertForSequenceClassification(cfg).save_pretrained(tmp_path / "text_clf")  # weights only: no tokenizer here
    return tmp_path / "text_clf", tmp_path / "tokenizer", tok


def test_text_classifier_with_its_tokenizer_elsewhere(tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification

    from spiritlm.judges.models import load_text_sentiment_judge

    clf_dir, tok_dir, tok = _tiny_text_classifier(tmp_path)
    texts = ["the day is good", "a very bad day", "", "good good good"]
    judge = load_text_sentiment_judge(clf_dir, tokenizer=tok_dir)
    model = AutoModelForSequenceClassification.from_pretrained(clf_dir).eval()
    with torch.no_grad():
        expected = [model.config.id2label[int(model(**tok(t, return_tensors="pt")).logits[0].argmax())].lower() for t in texts]
    assert judge.predict(texts, batch_size=1) == expected  # Meta: the arg-max label, lower-cased
    with pytest.raises(ValueError, match="no separate tokenizer"):
        from spiritlm.judges import models as J

        J.TextSentimentJudge.fit(["good day", "bad day"], ["positive", "negative"]).save(tmp_path / "ours")
        load_text_sentiment_judge(tmp_path / "ours", tokenizer=tok_dir)


def test_emotion_classifier_one_clip_at_a_time_as_meta_scores_it(tmp_path):
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForSequenceClassification

    from spiritlm.judges.models import load_speech_sentiment_judge

    labels = {0: "angry", 1: "default", 2: "happy", 3: "sad"}
    cfg = Wav2Vec2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, conv_dim=(8, 8),
                         conv_kernel=(10, 3), conv_stride=(5, 2), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
                         feat_extract_norm="group", num_labels=4, id2label=labels, label2id={v: k for k, v in labels.items()},
                         classifier_proj_size=8)
    torch.manual_seed(0)
    model = Wav2Vec2ForSequenceClassification(cfg).eval()
    fe = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=False)
    model.save_pretrained(tmp_path / "emo")
    fe.save_pretrained(tmp_path / "emo")
    rng = np.random.default_rng(0)
    wavs = [(rng.standard_normal(n) * s).astype(np.float32) for n, s in ((3000, 0.1), (8000, 0.5), (4500, 0.02), (12000, 1.0))]
    expresso = {"happy": "positive", "angry": "negative", "sad": "negative", "default": "neutral"}
    with torch.no_grad():
        expected = [expresso[labels[int(model(**fe(w, sampling_rate=16000, return_tensors="pt")).logits[0].argmax())]] for w in wavs]
    judge = load_speech_sentiment_judge(tmp_path / "emo")
    assert judge.predict(wavs, batch_size=1) == expected
    assert S.judge_speech(judge, wavs, one_clip_at_a_time=True) == expected


# ---------------------------------------------------------------------------------------------
# The demo runs both protocols; the report shows them side by side
# ---------------------------------------------------------------------------------------------


def test_demo_runs_stsp_under_both_protocols_and_the_report_sets_them_side_by_side(tmp_path):
    from spiritlm.recipes.report import STSP_OURS, DemoLayout, stsp_protocols_section
    from spiritlm.recipes import demo as demo_mod

    stage = next(s for s in demo_mod.build_stages(tmp_path, demo_mod.PRESETS["quick"], 0) if s.name == "eval-stsp")
    L = DemoLayout(tmp_path)
    (meta_cmd, ours_cmd) = stage.commands
    assert meta_cmd[meta_cmd.index("--protocol") + 1] == "meta" and meta_cmd[meta_cmd.index("--out") + 1] == str(L.eval_dir("stsp"))
    assert ours_cmd[ours_cmd.index("--protocol") + 1] == "ours" and ours_cmd[ours_cmd.index("--out") + 1] == str(L.eval_dir(STSP_OURS))
    # the same model, items, judges and seed: only the protocol differs
    strip = lambda c: [a for i, a in enumerate(c) if a not in ("--out", "--protocol") and c[i - 1] not in ("--out", "--protocol")]  # noqa: E731
    assert strip(meta_cmd) == strip(ours_cmd)
    assert L.eval_dir(STSP_OURS) / "metrics.json" in stage.outputs

    assert stsp_protocols_section(L) == []  # nothing ran yet: no section
    rec = lambda v, c: {"value": v, "ci95": [v - 0.1, v + 0.1], "chance": c, "n": 8}  # noqa: E731
    for task, vals, note in (("stsp", (0.5, 0.25), "vocoder speaker 2 asked, the vocoder has 1 speaker: speaker 0 used"),
                             (STSP_OURS, (0.375, 0.125), None)):
        L.eval_dir(task).mkdir(parents=True)
        (L.eval_dir(task) / "metrics.json").write_text(json.dumps({
            "accuracy_t2t": rec(vals[0], 0.3333), "accuracy_s2s": rec(vals[1], 0.3333),
            "skipped_directions": {"t2s": "no vocoder"}, "config": {"speaker_note": note}}))
    md = "\n".join(stsp_protocols_section(L))
    assert "| t2t | 0.5 [0.4, 0.6] (chance 0.3333, n 8) | 0.375 [0.275, 0.475] (chance 0.3333, n 8) |" in md
    assert "| s2s | 0.25 [0.15, 0.35] (chance 0.3333, n 8) | 0.125 [0.025, 0.225] (chance 0.3333, n 8) |" in md
    assert "| t2s | — | — |" in md and "*meta: t2s: no vocoder; vocoder speaker 2 asked" in md


# ---------------------------------------------------------------------------------------------
# ASR / TTS budgets and speaker
# ---------------------------------------------------------------------------------------------


def test_answer_budgets_follow_the_reference_under_a_ceiling():
    from spiritlm.evals.engine import answer_budget

    assert answer_budget(12, 384) == 50 and answer_budget(20, 384) == 50 and answer_budget(21, 384) == 75
    assert answer_budget(187, 384) == 384  # the ceiling
    # a 35 s LibriSpeech utterance (the corpus's longest) is ~100 words, ~150 LLaMA tokens: its budget stays under the ceiling
    assert answer_budget(150, 384) == 325 and answer_budget(150, 384) >= 150
    # TTS: 35 s of expressive tokens is at most 875 + 437 + 35 before deduplication; 2048 never cuts it
    assert answer_budget(1347, 2048) >= 1347


def test_speaker_falls_back_with_a_note_on_a_smaller_vocoder():
    from spiritlm.evals.common import resolve_speaker

    class Voc:
        class config:
            num_speakers = 4

    assert resolve_speaker(Voc(), 2) == (2, None)
    Voc.config.num_speakers = 2
    assert resolve_speaker(Voc(), 2) == (0, "vocoder speaker 2 asked, the vocoder has 2 speakers: speaker 0 used")
    Voc.config.num_speakers = 0
    assert resolve_speaker(Voc(), 0) == (0, None) and resolve_speaker(Voc(), "alice") == ("alice", None)
    assert resolve_speaker(None, 2) == (2, None)


def test_stsp_command_on_a_meta_manifest_with_metas_text_classifier(tiny_lm, tmp_path, capsys):
    """The whole Meta path through the CLI: WAV check, Meta's labels, an HF classifier with its tokenizer elsewhere,
    Meta-layout prediction files scored by Meta's rules."""
    from spiritlm.cli import main

    clf_dir, tok_dir, _ = _tiny_text_classifier(tmp_path)
    root = tmp_path / "stsp_data"
    root.mkdir()
    recs = []
    for i in range(6):
        sf.write(root / f"r{i}.wav", np.zeros(1600, np.float32), 16000)
        recs.append({"id": f"r{i}", "emotion": ("happy", "sad", "default", "Happy", "amused", "angry")[i], "wav_path": f"r{i}.wav",
                     "asr": "the day is good"})
    man = _write(root / "records_emov_test.jsonl", recs)
    units = _write(tmp_path / "units.jsonl", [{"id": f"r{i}", "hubert": "1 2 3"} for i in range(6)])
    out = tmp_path / "out"
    main(["eval", "stsp", "--model", str(tiny_lm.folder), "--manifest", str(man), "--units", str(units), "--out", str(out),
          "--text_judge", str(clf_dir), "--text_judge_tokenizer", str(tok_dir), "--directions", "[t2t]",
          "--max_new_tokens_text", "4", "--progress", "false"])
    m = json.loads((out / "metrics.json").read_text())
    assert m["config"]["protocol"] == "meta" and m["accuracy_t2t"]["n"] == 5  # "Happy" is outside Meta's map
    assert [p["id"] for p in m["config"]["skipped_items"]] == ["r3"]
    preds = [json.loads(x) for x in (out / "pred_t2t.jsonl").read_text().splitlines()]
    assert len(preds) == 5 and {p["pred"] for p in preds} <= {"positive", "negative", "neutral"}
    sc = m["meta_score"]["t2t"]
    assert sc["meta"]["n"] == 5 and sc["meta"]["dropped"]["out_of_map"] == 1 and sc["strict"]["n"] == 6
    assert sc["meta"]["correct"] == round(m["accuracy_t2t"]["value"] * 5)
    assert "[eval stsp] accuracy_t2t=" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["eval", "stsp", "--model", str(tiny_lm.folder), "--manifest", str(man), "--units", str(units), "--out", str(tmp_path / "out2"),
              "--text_judge", str(clf_dir), "--text_judge_tokenizer", str(tmp_path / "nope")])
    assert "nope: no such tokenizer folder (--text_judge_tokenizer)" in capsys.readouterr().err
