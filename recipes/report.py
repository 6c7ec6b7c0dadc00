"""The demo's report: ``report.md`` with PNG plots, a metrics table against chance and WAV links.

:func:`build_report` reads what the demo's stages left in a demo folder (layout in
:class:`DemoLayout`) and writes ``DEMO/report/``::

    report.md                 the report (links everything below)
    loss_curves.png           LM training/validation loss per subset (speech, text, interleaved)
    utterance_tokens.png      one test utterance: waveform, spectrogram, and its HuBERT (25 Hz),
                              pitch (12.5 Hz) and style (1 Hz) tokens aligned under it in seconds
    f0_resynthesis.png        original vs resynthesized F0 of one test utterance
    metrics_vs_chance.png     each headline metric with its 95% CI and its chance level
    audio/*.wav               originals, resyntheses, T→S and S→S generations

Every input is optional: a missing one turns its section into a line saying what is missing
(the demo itself fails loudly when a stage fails; the report only describes what exists).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spiritlm.atomic import atomic_file, atomic_path
from spiritlm.constants import SAMPLE_RATE, STREAM_RATES

#: The evaluation tasks, in the order the report lists them.
EVAL_TASKS = ("asr", "tts", "ic", "stsp", "zeroshot")
#: the demo's second STSP run, ``--protocol ours`` (``evals/stsp`` holds ``--protocol meta``)
STSP_OURS = "stsp-ours"
#: LM subsets and their colours in the loss plot.
SUBSET_COLOURS = {"speech": "tab:blue", "text": "tab:orange", "interleaved": "tab:green"}
#: Token streams of Meta's unit dict and their labels in the plots.
STREAM_LABELS = {"hubert": "HuBERT", "pitch": "pitch", "style": "style"}
#: At most this many WAVs of each kind are copied into the report.
MAX_WAVS = 4


@dataclass(frozen=True)
class DemoLayout:
    """Where each demo stage writes, under one demo folder (the demo and the report share it)."""

    root: Path

    @property
    def corpus(self) -> Path:
        return self.root / "corpus"

    @property
    def manifest(self) -> Path:
        return self.corpus / "manifest.jsonl"

    @property
    def text(self) -> Path:
        return self.root / "text.txt"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"

    @property
    def units(self) -> Path:
        return self.root / "units.jsonl"

    @property
    def data_train(self) -> Path:
        return self.root / "data" / "train"

    @property
    def data_valid(self) -> Path:
        return self.root / "data" / "valid"

    @property
    def lm_text(self) -> Path:
        return self.root / "lm" / "tiny-text"

    @property
    def lm_mix(self) -> Path:
        return self.root / "lm" / "tiny-interleaved"

    @property
    def vocoder(self) -> Path:
        return self.root / "vocoder"

    @property
    def vocoder_eval(self) -> Path:
        return self.root / "vocoder_eval"

    @property
    def resynth_units(self) -> Path:
        """A few test lines of ``units.jsonl``: what the resynthesis stage feeds the vocoder."""
        return self.root / "resynth" / "units.jsonl"

    @property
    def resynth(self) -> Path:
        """``<id>.wav`` per line of :attr:`resynth_units` (``spiritlm vocoder synth``)."""
        return self.root / "resynth" / "wavs"

    @property
    def generate(self) -> Path:
        """``<name>/generation_NN.wav`` and ``prompts.json`` (``spiritlm generate``)."""
        return self.root / "generate"

    @property
    def judges(self) -> Path:
        return self.root / "judges"

    def eval_dir(self, task: str) -> Path:
        return self.root / "evals" / task

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def summary(self) -> Path:
        return self.root / "demo_summary.json"


# ---------------------------------------------------------------------------------------------
# Reading inputs (pure, tolerant: None when absent)
# ---------------------------------------------------------------------------------------------


def _read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_loss_history(run_dir: Path) -> dict[str, dict[str, list[tuple[int, float]]]] | None:
    """Loss curves of one LM run: ``{"train": {subset: [(step, loss)]}, "val": {subset: [...]}}``.

    Reads ``metrics.jsonl`` (one record per log/validation; the last record of a step wins, as
    after a resume) or, without it, the summary ``metrics.json``. Train records give
    ``loss_<subset>`` per subset (and ``loss``, shown as ``all subsets``); validation records give
    ``<subset>``. Returns None when the run has no metrics.
    """
    from spiritlm.metrics_log import read_history

    jsonl = run_dir / "metrics.jsonl"
    history = read_history(jsonl) if jsonl.is_file() else _read_json(run_dir / "metrics.json")  # torn lines skipped
    if not isinstance(history, dict):
        return None
    train = {int(k): v for k, v in (history.get("train") or {}).items()}
    val = {int(k): v for k, v in (history.get("val") or {}).items()}
    if not train and not val:
        return None
    out: dict[str, dict[str, list[tuple[int, float]]]] = {"train": {}, "val": {}}
    for step in sorted(train):
        for key, value in train[step].items():
            if key == "loss":
                out["train"].setdefault("all subsets", []).append((step, float(value)))
            elif key.startswith("loss_"):
                out["train"].setdefault(key[len("loss_"):], []).append((step, float(value)))
    for step in sorted(val):
        for key, value in val[step].items():
            if key not in ("kind", "step") and isinstance(value, (int, float)):
                out["val"].setdefault(key, []).append((step, float(value)))
    return out


@dataclass
class MetricRow:
    """One line of the metrics table. ``ci95``/``chance``/``n`` are None when the source has none."""

    section: str
    name: str
    value: float
    ci95: tuple[float, float] | None = None
    chance: float | None = None
    n: int | None = None

    @property
    def lower_is_better(self) -> bool:
        """Error rates, distortions and losses (by name: :data:`LOWER_IS_BETTER`)."""
        return any(word in self.name.lower() for word in LOWER_IS_BETTER)

    @property
    def verdict(self) -> str:
        """``vs_chance`` with whether that side is the better one: ``above (better)``, ``below (worse)``, ``overlaps``."""
        side = self.vs_chance
        if side in ("above", "below"):
            better = (side == "below") == self.lower_is_better
            return f"{side} ({'better' if better else 'worse'})"
        return side

    @property
    def vs_chance(self) -> str:
        """``above``/``below`` when the 95% CI (or, without one, the value) excludes chance, else ``overlaps``."""
        if self.chance is None or not math.isfinite(self.chance) or not math.isfinite(self.value):
            return ""
        low, high = self.ci95 if self.ci95 is not None else (self.value, self.value)
        if low > self.chance:
            return "above"
        if high < self.chance:
            return "below"
        return "overlaps"


#: Keys of metrics files that are settings or bookkeeping, not metrics.
SKIP_KEYS = ("config", "seed", "timings", "last_log", "elapsed", "seconds", "steps", "by_style", "skipped")
#: The speech tokenizer's headline metrics and the key of each one's baseline in its metrics.json
#: (majority-class rate for purities, a per-speaker mean F0 for the F0 error), shown as chance.
TOKENIZER_METRICS = (
    ("pnmi", None),
    ("phone_purity", "phone_majority_rate"),
    ("f0_rmse_cents", "f0_rmse_cents_speaker_mean_baseline"),
    ("vuv_error", None),
    ("codebook_perplexity", None),
    ("style_purity", "style_majority_rate"),
    ("style_pnmi", None),
)


def _number(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x)


#: Metric names containing one of these are better when lower.
LOWER_IS_BETTER = ("wer", "cer", "error", "edit_rate", "mcd", "rmse", "mae", "loss", "distortion")


def _is_count(key: str) -> bool:
    """Sizes (items, pairs, frames counted), shown as ``n`` rather than as metrics."""
    return key in ("n", "pairs") or key.startswith(("n_", "num_")) or "frames_voiced" in key


def metric_rows(section: str, metrics: Any, prefix: str = "", headline_only: bool = False) -> list[MetricRow]:
    """Flattens a metrics file into table rows.

    A headline metric is ``{"value": v, "ci95": [low, high], "chance": c, "n": n}`` (the eval
    interface's ``metrics.json``); a plain number is a metric without CI; nested dicts are walked
    with dotted names, and a numeric ``chance`` in a dict (a judge's majority-class rate) is the
    chance level of its sibling numbers, ``n``/``n_test`` their ``n``. Settings and bookkeeping
    (:data:`SKIP_KEYS`, keys ending in ``_s``, other counts) and lists (confusion matrices, …)
    are left out; with ``headline_only`` plain numbers too (an eval's extras: label counts, the
    judges' scores it copies).
    """
    rows: list[MetricRow] = []
    if not isinstance(metrics, dict):
        return rows
    chance = _number(metrics.get("chance"))
    n = _number(metrics.get("n_test", metrics.get("n")))
    for key, entry in metrics.items():
        key = str(key)
        name = f"{prefix}{key}"
        if any(skip in key for skip in SKIP_KEYS) or key.endswith("_s") or key == "chance" or _is_count(key):
            continue
        if isinstance(entry, dict) and "value" in entry and (entry["value"] is None or _number(entry["value"]) is not None):
            # a headline metric; null is how the evals write NaN (no item could be scored): shown, not dropped
            ci = entry.get("ci95")
            ci95 = None
            if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(_number(c) is not None for c in ci):
                ci95 = (float(ci[0]), float(ci[1]))
            en = _number(entry.get("n"))
            value = _number(entry["value"])
            rows.append(MetricRow(section, name, float("nan") if value is None else value, ci95, _number(entry.get("chance")),
                                  int(en) if en is not None else None))
        elif isinstance(entry, dict):
            rows.extend(metric_rows(section, entry, f"{name}.", headline_only))
        elif _number(entry) is not None and not headline_only:  # NaN included: a metric that could not be computed says so
            rows.append(MetricRow(section, name, float(entry), chance=chance, n=int(n) if n is not None else None))
    return rows


def tokenizer_rows(metrics: Any) -> list[MetricRow]:
    """The speech tokenizer's headline metrics, each with its baseline as the chance level."""
    if not isinstance(metrics, dict):
        return []
    rows = []
    for key, base in TOKENIZER_METRICS:
        value = _number(metrics.get(key))
        if value is not None:
            rows.append(MetricRow("speech tokenizer", key, value, chance=_number(metrics.get(base)) if base else None))
    return rows


def vocoder_rows(metrics: Any) -> list[MetricRow]:
    """``spiritlm vocoder eval``'s metrics: the trained vocoder's, each with the untrained one's as baseline; then the controls."""
    if not isinstance(metrics, dict):
        return []
    trained, untrained = metrics.get("trained"), metrics.get("untrained")
    rows = []
    if isinstance(trained, dict):
        base = untrained if isinstance(untrained, dict) else {}
        n = _number(metrics.get("num_utterances"))
        for r in metric_rows("vocoder", trained):
            rows.append(MetricRow("vocoder", r.name, r.value, r.ci95, r.chance if r.chance is not None else _number(base.get(r.name)),
                                  r.n if r.n is not None else (int(n) if n is not None else None)))
    rows += metric_rows("vocoder", metrics.get("control_pitch"), "control_pitch.")
    # style control: per property, whether the output moves the way the corpus does (the other
    # numbers of that experiment are in vocoder_eval/metrics.json)
    rows += [r for r in metric_rows("vocoder", metrics.get("control_style"), "control_style.")
             if r.name.endswith(("same_sign_fraction", "corr_output_vs_corpus_change"))]
    # a metrics file in the evals' own layout (headline dicts) still shows
    return rows or metric_rows("vocoder", metrics)


def _fmt(x: float | None) -> str:
    if x is None:
        return "—"
    if x != x:  # NaN
        return "nan"
    return f"{x:.4g}"


def metrics_table(rows: Sequence[MetricRow]) -> str:
    """The rows as a Markdown table (value, 95% CI, chance level, n, where the CI lies against chance)."""
    lines = ["| section | metric | value | 95% CI | chance / baseline | n | vs chance |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        ci = f"[{_fmt(r.ci95[0])}, {_fmt(r.ci95[1])}]" if r.ci95 is not None else "—"
        lines.append(f"| {r.section} | {r.name} | {_fmt(r.value)} | {ci} | {_fmt(r.chance)} | "
                     f"{r.n if r.n is not None else '—'} | {r.verdict or '—'} |")
    return "\n".join(lines)


def _manifest_items(layout: DemoLayout) -> list[dict]:
    """The manifest's lines as dicts, audio paths absolute (the one manifest reader,
    :mod:`spiritlm.corpus.manifest`); none before the corpus stage has written it."""
    from spiritlm.corpus.manifest import read_audio_manifest

    return [u.to_json() for u in read_audio_manifest(layout.manifest)] if layout.manifest.is_file() else []


def _units_rows(layout: DemoLayout) -> dict[str, dict]:
    """``{id: units record}`` of the usable lines of the units file (the one units reader,
    :mod:`spiritlm.units_jsonl`; a torn line is left out); none before the tokenize stage."""
    from spiritlm.units_jsonl import iter_unit_lines

    if not layout.units.is_file():
        return {}
    return {line.id: line.record for line in iter_unit_lines(layout.units) if line.error is None and line.id is not None}


def _pick_utterance(layout: DemoLayout, prefer: Iterable[str] = ()) -> tuple[dict, dict] | None:
    """(manifest item, units row) of the first test utterance that has units (a preferred id first)."""
    units = _units_rows(layout)
    items = [it for it in _manifest_items(layout) if str(it.get("id")) in units and Path(str(it.get("audio"))).is_file()]
    if not items:
        return None
    by_id = {str(it["id"]): it for it in items}
    for pid in prefer:
        if pid in by_id:
            return by_id[pid], units[pid]
    test = [it for it in items if it.get("split") == "test"] or items
    return test[0], units[str(test[0]["id"])]


# ---------------------------------------------------------------------------------------------
# Plots (each returns the PNG's path, or None with nothing to plot)
# ---------------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display; the report is files
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def plot_loss_curves(runs: dict[str, dict], path: Path) -> Path | None:
    """One panel per LM run: training loss per subset (thin) and validation loss per subset (dots)."""
    runs = {name: hist for name, hist in runs.items() if hist}
    if not runs:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4), squeeze=False)
    for ax, (name, hist) in zip(axes[0], runs.items()):
        for subset, points in hist["train"].items():
            steps, losses = zip(*points)
            ax.plot(steps, losses, lw=0.8, alpha=0.6, color=SUBSET_COLOURS.get(subset, "grey"), label=f"train {subset}")
        for subset, points in hist["val"].items():
            steps, losses = zip(*points)
            ax.plot(steps, losses, "o-", ms=4, lw=1.5, color=SUBSET_COLOURS.get(subset, "black"), label=f"valid {subset}")
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats/token)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def _runs(values: Sequence[str]) -> list[tuple[str, int, int]]:
    """(value, first frame, frame count) of each run of equal consecutive values."""
    out: list[tuple[str, int, int]] = []
    for i, v in enumerate(values):
        if out and out[-1][0] == v:
            out[-1] = (v, out[-1][1], out[-1][2] + 1)
        else:
            out.append((v, i, 1))
    return out


def plot_utterance_tokens(wav: np.ndarray, sample_rate: int, units: dict, path: Path,
                          words: Sequence[dict] = (), title: str = "") -> Path:
    """Waveform, spectrogram and the unit/pitch/style tokens under them on one time axis (seconds).

    Args:
        wav: float ``(samples,)`` at ``sample_rate`` Hz.
        units: Meta's unit dict: space-separated frame-rate streams ``hubert`` (25 Hz) and,
            when present, ``pitch`` (12.5 Hz) and ``style`` (1 Hz); a token spanning frames
            ``[i, i + d)`` of a stream at ``r`` Hz is drawn from ``i / r`` to ``(i + d) / r`` s.
        words: ``{"word", "start", "end"}`` (seconds), drawn as boundaries over the waveform.
    """
    plt = _pyplot()
    streams = [(key, label, STREAM_RATES[key]) for key, label in STREAM_LABELS.items() if str(units.get(key, "")).split()]
    fig, axes = plt.subplots(3, 1, figsize=(12, 7), sharex=True, gridspec_kw={"height_ratios": [1, 1.4, 0.5 + 0.4 * len(streams)]})
    duration = len(wav) / sample_rate
    t = np.arange(len(wav)) / sample_rate
    axes[0].plot(t, wav, lw=0.4, color="black")
    axes[0].set_ylabel("amplitude")
    for w in words:
        axes[0].axvline(float(w["start"]), color="tab:red", lw=0.5, alpha=0.6)
        axes[0].text((float(w["start"]) + float(w["end"])) / 2, 1.02, str(w["word"]), transform=axes[0].get_xaxis_transform(),
                     ha="center", va="bottom", fontsize=7)
    axes[0].set_title(title, pad=14)
    from scipy.signal import spectrogram

    # 25 ms windows every 10 ms; a floor keeps digital silence finite in dB
    nfft = max(64, int(0.025 * sample_rate))
    freqs, times, power = spectrogram(wav, fs=sample_rate, nperseg=nfft, noverlap=nfft - int(0.010 * sample_rate))
    axes[1].pcolormesh(times, freqs, 10 * np.log10(power + 1e-10), cmap="magma", shading="auto")
    axes[1].set_ylabel("frequency (Hz)")
    ax = axes[2]
    for row, (key, label, rate) in enumerate(reversed(streams)):
        for k, (tok, start, count) in enumerate(_runs(str(units[key]).split())):
            x0, width = start / rate, count / rate
            ax.add_patch(plt.Rectangle((x0, row + 0.1), width, 0.8, facecolor=("#dde6f3" if k % 2 else "#b9cbe6"), edgecolor="white", lw=0.3))
            vertical = key == "hubert"
            ax.text(x0 + width / 2, row + 0.5, tok, ha="center", va="center", fontsize=5 if vertical else 7,
                    rotation=90 if vertical else 0, clip_on=True)
    ax.set_yticks([r + 0.5 for r in range(len(streams))])
    ax.set_yticklabels([f"{label} ({rate:g} Hz)" for _, label, rate in reversed(streams)])
    ax.set_ylim(0, max(len(streams), 1))
    ax.set_xlim(0, duration)
    ax.set_xlabel("time (s)")
    return _save(fig, path)


def f0_rmse_cents(f0_a: np.ndarray, f0_b: np.ndarray) -> float | None:
    """RMSE in cents between two F0 tracks (Hz, 0 = unvoiced) over frames voiced in both (None if none).

    The per-frame errors are the tokenizer's and the vocoder's (``f0_errors``), so the report's
    figure is the one their metrics give for the same tracks.
    """
    from spiritlm.tokenizers.metrics import f0_errors
    from spiritlm.vocoder.metrics import rmse

    a, b = np.asarray(f0_a, dtype=np.float64), np.asarray(f0_b, dtype=np.float64)
    cents, _ = f0_errors(a, (a > 0).astype(np.float64), b, (b > 0).astype(np.float64))
    return rmse(cents) if cents.size else None


def plot_f0(original: np.ndarray, resynth: np.ndarray, frame_rate: float, path: Path, title: str = "") -> Path:
    """Original vs resynthesized F0 (Hz, 0 = unvoiced, drawn as gaps) against time in seconds."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(12, 3.5))
    for f0, label, style in ((original, "original", "-"), (resynth, "resynthesized", "--")):
        f0 = np.asarray(f0, dtype=np.float64)
        ax.plot(np.arange(len(f0)) / frame_rate, np.where(f0 > 0, f0, np.nan), style, lw=1.2, label=label)
    rmse = f0_rmse_cents(original, resynth)
    ax.set_title(title + (f" — F0 RMSE {rmse:.0f} cents on frames voiced in both" if rmse is not None else ""))
    ax.set_xlabel("time (s)")
    ax.set_ylabel("F0 (Hz)")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_metrics_vs_chance(rows: Sequence[MetricRow], path: Path) -> Path | None:
    """One strip per metric that has a chance level: its 95% CI (bar), value (dot), chance (red tick)."""
    rows = [r for r in rows if r.chance is not None and math.isfinite(r.chance) and math.isfinite(r.value)
            and (r.ci95 is None or all(map(math.isfinite, r.ci95)))]
    if not rows:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(len(rows), 1, figsize=(8, 0.55 * len(rows) + 0.6), squeeze=False)
    for ax, r in zip(axes[:, 0], rows):
        lo, hi = r.ci95 if r.ci95 is not None else (r.value, r.value)
        ax.plot([lo, hi], [0, 0], lw=5, color="tab:blue", alpha=0.4, solid_capstyle="butt")
        colour = {"better": "tab:green", "worse": "tab:red"}.get(r.verdict.split("(")[-1].rstrip(")"), "tab:grey")
        ax.plot([r.value], [0], "o", color=colour)
        ax.plot([r.chance], [0], "|", ms=18, mew=2.5, color="tab:red")
        span = max(hi, r.chance, r.value) - min(lo, r.chance, r.value)
        pad = 0.1 * span if span > 0 else 0.05 * max(abs(r.value), 1.0)
        ax.set_xlim(min(lo, r.chance, r.value) - pad, max(hi, r.chance, r.value) + pad)
        ax.set_yticks([])
        ax.set_ylabel(f"{r.section} {r.name}", rotation=0, ha="right", va="center", fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        for side in ("top", "left", "right"):
            ax.spines[side].set_visible(False)
    axes[0, 0].set_title("value (dot: green better than chance, red worse, grey within the CI), 95% CI (bar), chance or baseline (red tick)", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------


def _missing(what: str, paths: Iterable[Path], root: Path) -> str:
    names = ", ".join(f"`{_rel(p, root)}`" for p in paths)
    return f"*Not available: {what} ({names} missing).*"


def _rel(path: Path, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def _copy_wav(src: Path, audio_dir: Path, name: str) -> str:
    with atomic_path(audio_dir / name) as tmp:
        shutil.copyfile(src, tmp)
    return f"audio/{name}"


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _collect_rows(layout: DemoLayout) -> tuple[list[MetricRow], list[str]]:
    """Metric rows of every source that exists, and a note for each that does not."""
    rows: list[MetricRow] = []
    notes: list[str] = []
    for task in EVAL_TASKS:
        path = layout.eval_dir(task) / "metrics.json"
        found = metric_rows(task, _read_json(path), headline_only=True)
        rows += found
        if not found:
            notes.append(f"eval `{task}`: `{_rel(path, layout.root)}` missing or without metrics")
    sources = (
        ("judges", layout.judges / "judges_metrics.json"),
        ("vocoder", layout.vocoder_eval / "metrics.json"),
        ("speech tokenizer", layout.tokenizer / "metrics.json"),
    )
    for section, path in sources:
        data = _read_json(path)
        found = {"speech tokenizer": tokenizer_rows, "vocoder": vocoder_rows}.get(section, lambda d: metric_rows(section, d))(data)
        rows += found
        if not found:
            notes.append(f"{section}: `{_rel(path, layout.root)}` missing or without metrics")
    for name, run in (("LM text-only", layout.lm_text), ("LM interleaved", layout.lm_mix)):
        hist = read_loss_history(run)
        if hist is None or not hist["val"]:
            notes.append(f"{name}: no validation records in `{_rel(run, layout.root)}`")
            continue
        for subset, points in hist["val"].items():
            rows.append(MetricRow(name, f"valid loss {subset} (step {points[-1][0]})", points[-1][1]))
    return rows, notes


def stsp_protocols_section(layout: DemoLayout) -> list[str]:
    """Markdown lines: STSP accuracy per direction under ``--protocol meta`` and ``--protocol ours``, side by side."""
    runs = {name: _read_json(layout.eval_dir(task) / "metrics.json") for name, task in (("meta", "stsp"), ("ours", STSP_OURS))}
    if not any(isinstance(m, dict) for m in runs.values()):
        return []

    def cell(m: Any, key: str) -> str:
        rec = m.get(key) if isinstance(m, dict) else None
        if not isinstance(rec, dict) or rec.get("value") is None:
            return "—"
        ci = rec.get("ci95") or [None, None]
        return f"{_fmt(rec['value'])} [{_fmt(ci[0])}, {_fmt(ci[1])}] (chance {_fmt(rec.get('chance'))}, n {rec.get('n', '?')})"

    md = ["", "### STSP under both protocols", "",
          "`--protocol meta` decodes and prompts as Meta's released script (50/300 new tokens, text ends at EOS only, "
          "speech EOS banned, top-k 50, speaker 2); `--protocol ours` is the cheaper setup (40/150 tokens, stops at a marker "
          "or newline, no top-k, speaker 0). evals/README.md lists every difference.", "",
          "| direction | meta | ours |", "|---|---|---|"]
    for d in ("t2t", "t2s", "s2t", "s2s", "avg"):
        md.append(f"| {d} | {cell(runs['meta'], f'accuracy_{d}')} | {cell(runs['ours'], f'accuracy_{d}')} |")
    for name, m in runs.items():
        if not isinstance(m, dict):
            md.append(f"\n*{name}: no metrics.json.*")
            continue
        extra = [f"{k}: {v}" for k, v in (m.get("skipped_directions") or {}).items()]
        note = (m.get("config") or {}).get("speaker_note")
        if extra or note:
            md.append(f"\n*{name}: " + "; ".join(extra + ([note] if note else [])) + ".*")
    return md


def build_report(demo_dir: str | os.PathLike) -> Path:
    """Writes ``DEMO/report/report.md`` (and its PNGs and WAVs) from a demo folder; returns its path.

    Missing inputs become a line in their section saying what is missing; nothing here raises for
    an absent stage output.
    """
    layout = DemoLayout(Path(demo_dir))
    out = layout.report
    out.mkdir(parents=True, exist_ok=True)
    audio_dir = out / "audio"
    md: list[str] = ["# Spirit LM demo report", ""]
    md += _summary_section(layout)
    md += _metrics_section(layout, out)
    md += _loss_section(layout, out)
    utterance, picked, resynth_ids = _utterance_section(layout, out)
    md += utterance
    md += _resynthesis_section(layout, out, audio_dir, picked, resynth_ids)
    md += ["## Generations", ""]
    md += _generation_section(layout, audio_dir)
    md.append("")
    md += _serve_section(layout)
    text = "\n".join(md) + "\n"
    report = out / "report.md"
    with atomic_file(report) as f:
        f.write(text)
    return report


def _summary_section(layout: DemoLayout) -> list[str]:
    """The demo folder, its preset and the seconds per stage."""
    root = layout.root
    md: list[str] = []
    summary = _read_json(layout.summary)
    md.append(f"Demo folder: `{root.resolve()}`.")
    if isinstance(summary, dict):
        md.append(f"Preset `{summary.get('preset', '?')}`; wall time {summary.get('seconds', '?')} s.")
        stage_s = summary.get("stage_seconds") or {}
        cpu = summary.get("stage_cpu_seconds") or {}
        if stage_s:
            md += ["", "Seconds per stage (wall clock, and CPU time of the demo's process: on a busy machine the wall time grows, "
                   "the CPU time much less; worker pools of `corpus synth` and `data build` are not counted in it):", "",
                   "| stage | wall s | CPU s |", "|---|---|---|"]
            md += [f"| {k} | {v} | {cpu.get(k, '—') if cpu.get(k) is not None else '—'} |" for k, v in stage_s.items()]
    md.append("")

    return md


def _metrics_section(layout: DemoLayout, out: Path) -> list[str]:
    """The metrics table against chance, what is missing, the STSP protocols and the plot."""
    md: list[str] = []
    rows, notes = _collect_rows(layout)
    md += ["## Metrics", "",
           "Every metric with its 95% bootstrap interval and chance level where the evaluation gives them; "
           "*vs chance* says whether the interval lies above or below chance or overlaps it, and whether "
           "that side is the better one (error rates, distortions and losses are better when lower). The judges' rows are the judges' own "
           "scores on the test split, before any LM is judged by them, against the majority-class rate. "
           "Baselines in the chance column: an untrained vocoder of the same architecture for the vocoder's "
           "resynthesis metrics (lower is better for all but the controls); the majority-class rate and a "
           "per-speaker mean F0 for the speech tokenizer.", ""]
    md.append(metrics_table(rows) if rows else "*No metrics found.*")
    if notes:
        md += ["", "Missing:", *[f"- {n}" for n in notes]]
    md += stsp_protocols_section(layout)
    png = plot_metrics_vs_chance(rows, out / "metrics_vs_chance.png")
    if png is not None:
        md += ["", f"![metrics vs chance]({png.name})"]
    md.append("")

    return md


def _loss_section(layout: DemoLayout, out: Path) -> list[str]:
    """The LM's loss curves per subset."""
    root = layout.root
    md: list[str] = []
    md += ["## LM loss curves", ""]
    runs = {"text-only pretraining": read_loss_history(layout.lm_text),
            "continued pretraining (interleaved)": read_loss_history(layout.lm_mix)}
    png = plot_loss_curves(runs, out / "loss_curves.png")
    if png is None:
        md.append(_missing("LM training metrics", [layout.lm_text / "metrics.jsonl", layout.lm_mix / "metrics.jsonl"], root))
    else:
        md.append("Training loss per subset (thin lines) and validation loss per subset (dots), nats per token.")
        md += ["", f"![loss curves]({png.name})"]
        absent = [name for name, hist in runs.items() if not hist]
        if absent:
            md += ["", f"*No metrics for: {', '.join(absent)}.*"]
    md.append("")

    return md


def _utterance_section(layout: DemoLayout, out: Path) -> tuple[list[str], tuple[dict, dict] | None, list[str]]:
    """One test utterance and its tokens; returns ``(lines, the utterance picked, resynthesized ids)``."""
    root = layout.root
    md: list[str] = []
    md += ["## One utterance and its tokens", ""]
    resynth_ids = sorted(p.stem for p in layout.resynth.glob("*.wav")) if layout.resynth.is_dir() else []
    picked = _pick_utterance(layout, prefer=resynth_ids)
    if picked is None:
        md.append(_missing("an utterance with units", [layout.manifest, layout.units], root))
    else:
        from spiritlm.audio import load_audio

        item, units = picked
        wav = load_audio(item["audio"])
        png = plot_utterance_tokens(wav, SAMPLE_RATE, units, out / "utterance_tokens.png", item.get("words") or [],
                                    title=f"{item['id']}: {item.get('text') or ''}")
        md += [f"`{item['id']}` ({item.get('speaker') or '?'}, style {item.get('style') or '?'}): “{item.get('text') or ''}”", "",
               "HuBERT-like units at 25 Hz, pitch tokens at 12.5 Hz and style tokens at 1 Hz, each drawn over "
               "the seconds it covers (runs of a repeated token merged), under the waveform and spectrogram.",
               "", f"![utterance tokens]({png.name})"]
    md.append("")

    return md, picked, resynth_ids


def _resynthesis_section(layout: DemoLayout, out: Path, audio_dir: Path, picked: tuple[dict, dict] | None,
                         resynth_ids: list[str]) -> list[str]:
    """The vocoder's resynthesis: F0 of the picked utterance, original vs resynthesized WAVs, vocoder eval plots."""
    root = layout.root
    md: list[str] = []
    md += ["## Resynthesis (vocoder)", ""]
    pairs = []
    if picked is not None and resynth_ids:
        items = {str(it["id"]): it for it in _manifest_items(layout)}
        ordered = [picked[0]["id"]] + [i for i in resynth_ids if i != picked[0]["id"]]
        pairs = [(items[i], layout.resynth / f"{i}.wav") for i in ordered if i in items and (layout.resynth / f"{i}.wav").is_file()]
    if not pairs:
        md.append(_missing("resynthesized audio", [layout.resynth], root))
    else:
        from spiritlm.audio import load_audio
        from spiritlm.tokenizers.f0 import F0_RATE, extract_f0

        item, wav_path = pairs[0]
        f0_orig, _ = extract_f0(load_audio(item["audio"]))
        f0_res, _ = extract_f0(load_audio(wav_path))
        png = plot_f0(f0_orig, f0_res, F0_RATE, out / "f0_resynthesis.png", title=str(item["id"]))
        rmse = f0_rmse_cents(f0_orig, f0_res)
        md += [f"F0 (WORLD DIO, 200 Hz) of `{item['id']}`: original audio vs the vocoder's output from its units"
               + (f"; F0 RMSE {rmse:.0f} cents on frames voiced in both." if rmse is not None else "; no frame is voiced in both."),
               "", f"![F0 original vs resynthesized]({png.name})", "", "| utterance | text | original | resynthesized |", "|---|---|---|---|"]
        for item, wav_path in pairs[:MAX_WAVS]:
            name = _safe(str(item["id"]))
            orig = _copy_wav(Path(item["audio"]), audio_dir, f"original_{name}.wav")
            res = _copy_wav(wav_path, audio_dir, f"resynth_{name}.wav")
            md.append(f"| `{item['id']}` | {item.get('text') or ''} | [{Path(orig).name}]({orig}) | [{Path(res).name}]({res}) |")
    for png_src in sorted(layout.vocoder_eval.glob("*.png")) if layout.vocoder_eval.is_dir() else []:
        dst = out / f"vocoder_{png_src.name}"
        shutil.copyfile(png_src, dst)
        md += ["", f"From `spiritlm vocoder eval`: ![{png_src.stem}]({dst.name})"]
    md.append("")

    return md


def _serve_section(layout: DemoLayout) -> list[str]:
    """The command that serves the demo's models."""
    md: list[str] = []
    md += ["## Talk to the model", "",
           "A local web page (record, upload or type a prompt; hear the answer while it is generated) and API, "
           "on this machine only (`spiritlm serve --help`):", "", "```", serve_command(layout), "```", ""]
    if not (layout.lm_mix / "metrics.json").is_file():
        md += [f"*The interleaved LM `{layout.lm_mix}` is not trained yet: the command works once the demo's "
               f"`lm-interleaved` stage has run.*", ""]

    return md


def serve_command(layout: DemoLayout, port: int = 8000) -> str:
    """The ``spiritlm serve`` command for the demo's interleaved LM, speech tokenizer and vocoder
    (absolute paths: it runs from any folder); the page is then at ``http://127.0.0.1:PORT/``."""
    at = DemoLayout(layout.root.resolve())
    return f"spiritlm serve --model {at.lm_mix} --speech_tokenizer {at.tokenizer} --vocoder {at.vocoder} --port {port}"


def _generation_section(layout: DemoLayout, audio_dir: Path) -> list[str]:
    """T→S and S→S WAVs of the demo's ``generate`` stage (with their prompts) and of the speech evals."""
    md: list[str] = []
    prompts = _read_json(layout.generate / "prompts.json")
    if isinstance(prompts, list) and prompts:
        md += ["| direction | prompt | output |", "|---|---|---|"]
        for p in prompts:
            name = str(p.get("name", ""))
            outputs = []
            for wav in sorted((layout.generate / name).glob("*.wav")):
                rel = _copy_wav(wav, audio_dir, f"{_safe(name)}_{wav.name}")
                outputs.append(f"[{Path(rel).name}]({rel})")
            text_out = p.get("output_text")
            cell = ", ".join(outputs) or (f"“{text_out}”" if text_out else "*nothing was generated*")
            prompt = str(p.get("prompt", ""))
            if p.get("prompt_audio") and Path(str(p["prompt_audio"])).is_file():
                rel = _copy_wav(Path(str(p["prompt_audio"])), audio_dir, f"{_safe(name)}_prompt.wav")
                prompt += f" ([{Path(rel).name}]({rel}))"
            md.append(f"| {p.get('direction', name)} | {prompt} | {cell} |")
    else:
        md.append(_missing("demo generations", [layout.generate / "prompts.json"], layout.root))
    for task in ("tts", "stsp"):
        d = layout.eval_dir(task)
        wavs = sorted(d.rglob("*.wav")) if d.is_dir() else []
        if wavs:
            md += ["", f"Speech generated by `spiritlm eval {task}` (first {min(len(wavs), MAX_WAVS)} of {len(wavs)}):", ""]
            for wav in wavs[:MAX_WAVS]:
                rel = _copy_wav(wav, audio_dir, f"{task}_{_safe(str(wav.relative_to(d)).replace(os.sep, '_'))}")
                md.append(f"- [{Path(rel).name}]({rel})")
    return md
