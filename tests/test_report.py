"""The demo's report (`spiritlm.recipes.report`) on small hand-made demo folders."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from spiritlm.recipes.report import (
    DemoLayout,
    MetricRow,
    build_report,
    f0_rmse_cents,
    metric_rows,
    metrics_table,
    read_loss_history,
)

SR = 16000
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _tone(f0: float, seconds: float) -> np.ndarray:
    """A harmonic tone (voiced for any F0 tracker) with a short silence at each end."""
    t = np.arange(int(seconds * SR)) / SR
    wav = sum(0.3 / k * np.sin(2 * np.pi * k * f0 * t) for k in range(1, 6))
    wav[: SR // 10] = 0
    wav[-SR // 10:] = 0
    return wav.astype(np.float32)


def _write_jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _valid_png(path: Path) -> tuple[int, int]:
    import matplotlib.image as mpimg

    assert path.read_bytes()[:8] == PNG_MAGIC, path
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50
    return img.shape[:2]


@pytest.fixture()
def demo_dir(tmp_path) -> Path:
    """Every input the report reads, made by hand (1.2 s tones instead of speech)."""
    L = DemoLayout(tmp_path / "demo")
    wavs = L.corpus / "wavs"
    wavs.mkdir(parents=True)
    items = []
    for i, f0 in enumerate((150.0, 200.0)):
        uid = f"utt{i}"
        sf.write(wavs / f"{uid}.wav", _tone(f0, 1.2), SR)
        items.append({"id": uid, "audio": f"wavs/{uid}.wav", "sample_rate": SR, "duration": 1.2, "speaker": "spk0",
                      "style": "happy", "text": "the cat sat", "split": "test",
                      "words": [{"word": "the", "start": 0.1, "end": 0.3}, {"word": "cat", "start": 0.3, "end": 0.7},
                                {"word": "sat", "start": 0.7, "end": 1.1}]})
    _write_jsonl(L.manifest, items)
    # 1.2 s: 30 HuBERT frames (25 Hz), 15 pitch frames (12.5 Hz), 2 style frames (1 Hz)
    _write_jsonl(L.units, [{"id": it["id"], "audio": str(wavs / f"{it['id']}.wav"), "hubert": " ".join(str(7 + j // 3) for j in range(30)),
                            "pitch": " ".join(str(j // 5) for j in range(15)), "style": "4 9"} for it in items])
    for run, subsets in ((L.lm_text, ["text"]), (L.lm_mix, ["speech", "text", "interleaved"])):
        recs = []
        for step in (0, 10, 20):
            recs.append({"kind": "val", "step": step, **{s: 5.0 - 0.1 * step for s in subsets}})
            if step:
                recs.append({"kind": "train", "step": step, "loss": 6.0 - 0.1 * step, **{f"loss_{s}": 6.0 - 0.1 * step for s in subsets}})
        _write_jsonl(run / "metrics.jsonl", recs)
    _write_json(L.eval_dir("asr") / "metrics.json", {"task": "asr", "wer": {"value": 0.42, "ci95": [0.31, 0.53], "chance": 1.0, "n": 50},
                                                     "cer": {"value": 0.2, "ci95": [0.15, 0.25], "chance": 0.9, "n": 50},
                                                     "config": {"shots": 10, "seed": 0}})
    _write_json(L.eval_dir("ic") / "metrics.json", {"task": "ic", "accuracy": {"value": 0.8, "ci95": [0.7, 0.9], "chance": 0.25, "n": 40},
                                                    "labels": {"positive": 3}, "judges": {"asr": {"cer": 0.5}},
                                                    "confusion": [[1, 0], [0, 1]]})
    _write_json(L.eval_dir("stsp") / "metrics.json", {"task": "stsp", "t2t": {"value": 0.35, "ci95": [0.2, 0.5], "chance": 0.3333, "n": 30},
                                                      "s2s": {"value": None, "ci95": [None, None], "chance": 0.3333, "n": 0}})
    _write_json(L.judges / "judges_metrics.json", {"seed": 0, "config": {"x": 1},
                                                   "text-sentiment": {"accuracy": 0.97, "chance": 0.34, "n_train": 100, "n_test": 30, "seconds": 1.0},
                                                   "asr": {"cer": 0.12, "wer": 0.3, "n_train": 90, "n_test": 30, "steps": 600}})
    _write_json(L.tokenizer / "metrics.json", {"pnmi": 0.43, "phone_purity": 0.40, "phone_majority_rate": 0.14, "timings": {"total_s": 3.0}})
    _write_json(L.vocoder_eval / "metrics.json", {"num_utterances": 2, "seconds": 3.0, "method": {"mcd": "WORLD"},
                                                  "trained": {"mcd_db": 7.5, "f0_rmse_cents": 90.0, "vuv_error": 0.1, "f0_frames_voiced_in_both": 100},
                                                  "untrained": {"mcd_db": 12.0, "f0_rmse_cents": 900.0, "vuv_error": float("nan")},
                                                  "control_pitch": {"pairs": 2, "corr_before": 0.1, "corr_after": 0.6},
                                                  "control_style": {"energy_db": {"same_sign_fraction": 1.0, "mean_abs_change_of_output": 0.5},
                                                                    "corpus_properties_by_style": {"a": {"x": 1.0}}}})
    # the resynthesis of utt1 is 10% sharp: 1200 * log2(1.1) = 165 cents
    L.resynth.mkdir(parents=True)
    sf.write(L.resynth / "utt1.wav", _tone(220.0, 1.2), SR)
    (L.generate / "t2s").mkdir(parents=True)
    sf.write(L.generate / "t2s" / "generation_00.wav", _tone(120.0, 0.5), SR)
    _write_json(L.generate / "prompts.json", [
        {"name": "t2t", "direction": "T→T", "prompt": "the cat", "output_text": "sat on the mat", "prompt_audio": None},
        {"name": "t2s", "direction": "T→S", "prompt": "the cat", "output_text": None, "prompt_audio": None},
        {"name": "s2s", "direction": "S→S", "prompt": "audio of utt0", "output_text": None, "prompt_audio": str(wavs / "utt0.wav")},
    ])
    (L.eval_dir("stsp") / "wavs").mkdir(parents=True)
    sf.write(L.eval_dir("stsp") / "wavs" / "item3_s2s.wav", _tone(130.0, 0.5), SR)
    return L.root


def _metric_names(md: str) -> list[str]:
    cells = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in md.splitlines() if ln.startswith("| ")]
    return [c[1] for c in cells if len(c) == 7 and c[0] != "section"]


def _row(md: str, section: str, metric: str) -> list[str]:
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 7 and cells[0] == section and cells[1] == metric:
            return cells
    raise AssertionError(f"no row {section} / {metric} in:\n{md}")


def test_report_plots_table_and_audio(demo_dir):
    report = build_report(demo_dir)
    assert report == demo_dir / "report" / "report.md"
    md = report.read_text()
    out = report.parent
    for name in ("loss_curves.png", "utterance_tokens.png", "f0_resynthesis.png", "metrics_vs_chance.png"):
        _valid_png(out / name)
        assert f"]({name})" in md
    # the loss plot has one panel per LM run: twice as wide as tall-ish
    h, w = _valid_png(out / "loss_curves.png")
    assert w > 2 * h
    # table: value, CI, chance, n and where the CI lies against chance
    assert _row(md, "asr", "wer")[2:] == ["0.42", "[0.31, 0.53]", "1", "50", "below (better)"]
    assert _row(md, "ic", "accuracy")[2:] == ["0.8", "[0.7, 0.9]", "0.25", "40", "above (better)"]
    # an eval's plain numbers (label counts, copied judge scores) stay out of the table
    assert "judges.asr.cer" not in _metric_names(md) and "labels.positive" not in _metric_names(md)
    assert _row(md, "stsp", "t2t")[2:] == ["0.35", "[0.2, 0.5]", "0.3333", "30", "overlaps"]
    # a metric nothing could be scored for (null, or NaN) is shown as nan, not dropped
    assert _row(md, "stsp", "s2s")[2:] == ["nan", "—", "0.3333", "0", "—"]
    # the judges' own scores, a classifier's majority rate as its chance level; no bookkeeping rows
    assert _row(md, "judges", "text-sentiment.accuracy")[2:] == ["0.97", "—", "0.34", "30", "above (better)"]
    assert _row(md, "judges", "asr.cer")[2] == "0.12"
    names = _metric_names(md)
    assert not [n for n in names if any(k in n for k in ("n_train", "n_test", "seconds", "steps", "confusion", "total_s", "seed", "frames_voiced", "by_style", "method", "pairs"))], names
    assert _row(md, "speech tokenizer", "phone_purity")[2:5] == ["0.4", "—", "0.14"]
    # the vocoder against an untrained one of the same architecture, then its control experiments
    assert _row(md, "vocoder", "mcd_db")[2:] == ["7.5", "—", "12", "2", "below (better)"]
    assert _row(md, "vocoder", "f0_rmse_cents")[4] == "900"
    assert _row(md, "vocoder", "vuv_error")[2:] == ["0.1", "—", "nan", "2", "—"]
    assert _row(md, "vocoder", "control_pitch.corr_after")[2] == "0.6"
    assert _row(md, "vocoder", "control_style.energy_db.same_sign_fraction")[2] == "1"
    assert "control_style.energy_db.mean_abs_change_of_output" not in _metric_names(md)
    assert _row(md, "LM interleaved", "valid loss speech (step 20)")[2] == "3"
    # evals with no outputs are named as missing; present ones are not
    assert "eval `tts`: `evals/tts/metrics.json` missing" in md and "eval `asr`:" not in md
    # every WAV link points at a copied file: originals + resyntheses, T→S, the S→S prompt, the eval's output
    links = re.findall(r"\]\((audio/[^)]+\.wav)\)", md)
    assert {"audio/original_utt1.wav", "audio/resynth_utt1.wav", "audio/t2s_generation_00.wav", "audio/s2s_prompt.wav",
            "audio/stsp_wavs_item3_s2s.wav"} <= set(links)
    for link in links:
        wav, sr = sf.read(out / link)
        assert sr == SR and len(wav) > 0
    assert "“sat on the mat”" in md
    # the resynthesis is 10% sharp: 1200 * log2(1.1) = 165 cents
    assert "F0 RMSE 165 cents" in md
    # the resynthesized utterance is the one drawn with its tokens
    assert "`utt1` (spk0, style happy)" in md


def test_report_with_nothing_says_what_is_missing(tmp_path):
    report = build_report(tmp_path / "empty")
    md = report.read_text()
    assert md.count("*Not available:") == 4  # loss curves, utterance, resynthesis, generations
    assert "*No metrics found.*" in md
    assert not list(report.parent.glob("*.png"))


def test_report_survives_partial_and_broken_inputs(demo_dir):
    L = DemoLayout(demo_dir)
    (L.lm_text / "metrics.jsonl").unlink()
    with open(L.lm_mix / "metrics.jsonl", "a") as f:
        f.write('{"kind": "val", "st')  # a line cut by a crash
    (L.eval_dir("ic") / "metrics.json").write_text("{not json")
    for wav in L.resynth.glob("*.wav"):
        wav.unlink()
    md = build_report(demo_dir).read_text()
    assert "*No metrics for: text-only pretraining.*" in md
    assert "eval `ic`: `evals/ic/metrics.json` missing or without metrics" in md
    assert "Not available: resynthesized audio" in md
    assert _row(md, "asr", "wer")[2] == "0.42"


def test_loss_history_last_record_of_a_step_wins(tmp_path):
    _write_jsonl(tmp_path / "metrics.jsonl", [
        {"kind": "train", "step": 10, "loss": 3.0, "loss_speech": 4.0, "lr": 1e-3},
        {"kind": "val", "step": 10, "speech": 5.0, "text": 2.0},
        {"kind": "train", "step": 10, "loss": 2.5, "loss_speech": 3.5, "lr": 1e-3},  # after a resume
        {"kind": "val", "step": 20, "speech": 4.0, "text": 1.5},
    ])
    hist = read_loss_history(tmp_path)
    assert hist["train"] == {"all subsets": [(10, 2.5)], "speech": [(10, 3.5)]}
    assert hist["val"] == {"speech": [(10, 5.0), (20, 4.0)], "text": [(10, 2.0), (20, 1.5)]}
    assert read_loss_history(tmp_path / "absent") is None


def test_loss_history_from_summary_file(tmp_path):
    _write_json(tmp_path / "metrics.json", {"train": {"5": {"loss": 2.0, "loss_text": 2.0}}, "val": {"5": {"text": 1.9}}, "final_step": 5})
    assert read_loss_history(tmp_path) == {"train": {"all subsets": [(5, 2.0)], "text": [(5, 2.0)]}, "val": {"text": [(5, 1.9)]}}


def test_vs_chance_and_table_format():
    assert MetricRow("s", "acc", 0.9, (0.8, 0.95), 0.5).vs_chance == "above"
    assert MetricRow("s", "wer", 0.4, (0.3, 0.5), 1.0).vs_chance == "below"
    assert MetricRow("s", "acc", 0.55, (0.45, 0.65), 0.5).vs_chance == "overlaps"
    assert MetricRow("s", "acc", 0.6, None, 0.5).vs_chance == "above"
    assert MetricRow("s", "loss", 3.0).vs_chance == ""
    assert MetricRow("s", "acc", 0.4, (0.3, 0.45), 0.5).verdict == "below (worse)"
    assert MetricRow("s", "wer", 1.5, (1.2, 1.8), 1.0).verdict == "above (worse)"
    assert MetricRow("s", "unit_edit_rate", 0.5, (0.4, 0.6), 1.0).verdict == "below (better)"
    assert MetricRow("s", "acc", 0.5, (0.4, 0.6), 0.5).verdict == "overlaps"
    table = metrics_table([MetricRow("ic", "accuracy", 0.123456, (0.1, 0.2), 0.25, 12)])
    assert table.splitlines()[2] == "| ic | accuracy | 0.1235 | [0.1, 0.2] | 0.25 | 12 | below (worse) |"


def test_metric_rows_walks_nested_and_skips_settings():
    rows = metric_rows("zeroshot", {"config": {"seed": 3}, "lexical": {"text": {"value": 0.7, "ci95": [0.6, 0.8], "chance": 0.5, "n": 100}},
                                    "syntactic_acc": 0.61, "elapsed_s": 12.0, "per_set": [0.1, 0.2], "n": 5})
    assert [(r.name, r.value, r.chance, r.n) for r in rows] == [("lexical.text", 0.7, 0.5, 100), ("syntactic_acc", 0.61, None, 5)]


def test_f0_rmse_cents_on_voiced_frames_only():
    a = np.array([100.0, 100.0, 0.0, 200.0])
    b = np.array([200.0, 0.0, 300.0, 200.0, 150.0])
    # frames voiced in both: 0 (an octave, 1200 cents) and 3 (0 cents)
    assert f0_rmse_cents(a, b) == pytest.approx(np.sqrt((1200**2 + 0) / 2))
    assert f0_rmse_cents(np.zeros(3), b) is None


def test_report_ends_with_the_serve_command_for_the_demo_models(tmp_path):
    import inspect
    import shlex

    from spiritlm.serve.cli import serve

    md = build_report(tmp_path / "demo").read_text()
    last = md.rstrip().rsplit("## ", 1)[1]
    root = (tmp_path / "demo").resolve()
    cmd = f"spiritlm serve --model {root / 'lm' / 'tiny-interleaved'} --speech_tokenizer {root / 'tokenizer'} --vocoder {root / 'vocoder'}"
    assert last.startswith("Talk to the model") and cmd in last and "not trained yet" in last
    flags = [a[2:] for a in shlex.split(last.split("```")[1]) if a.startswith("--")]
    assert flags and set(flags) <= set(inspect.signature(serve).parameters)
