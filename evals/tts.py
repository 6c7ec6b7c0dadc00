"""Few-shot TTS: text in, speech units out, judged by an ASR (CER) and against the reference units (unit edit rate).

The prompt of a target utterance (paper: k = 10) is ``k`` examples from the TRAIN split, then
the target's text and the speech marker (the markers separate the examples, as in the ASR task)::

    [Text]<shot text>[Speech]<shot units>  × k
    [Text]<target text>[Speech]

Shots are drawn per target with :func:`spiritlm.evals.common.draw_shots` (seeded by
``(seed, target id)``; never the target). As many shots as fit the model's context are kept
(:func:`spiritlm.evals.engine.fit_shots`). Decoding is greedy by default; the output may hold
speech tokens only, and ends at EOS, a modality marker (what follows a speech answer in the
shots) or a newline, or after ``min(max_new_tokens, length_ratio × reference tokens + 10)`` tokens (rounded up to a
multiple of 25 so that rows share batches). Meta's ``Spiritlm.generate`` bans EOS and the markers
in speech outputs (an answer always runs to its budget, and the judge then hears whatever
follows the target's words): we keep the stops the shots teach; evals/README.md sets both side
by side. The default ceiling, 2048 tokens, is above the longest LibriSpeech utterance's token
count (35 s: at most 875 HuBERT frames at 25 Hz before deduplication, 437 pitch, 35 style), so it never cuts a right-length answer;
the model's context can. Speech is voiced with speaker 2, as ``Spiritlm.generate``'s default (a
vocoder with fewer speakers falls back to 0 with a note).

Scores:

* ``cer``: the generated units → vocoder → the ASR judge → character error rate against the
  target text (jiwer after :func:`~spiritlm.evals.common.normalize_text`; corpus rate with a
  bootstrap interval). Chance: the CER of another target's text in place of the transcript
  (an output that ignores its text).
* ``unit_edit_rate``: edit distance between the generated and the reference utterance's
  deduplicated HuBERT units over the reference length. Chance: another target's units. Chance
  levels above 1 come from length differences; an empty (or one-unit) output scores 1.0
  (``empty_output_rate``), so a rate near 1.0 means nothing was learnt even below chance.
* toplines for reading them: ``judge_cer`` (the ASR judge on the targets' own audio) and
  ``resynth_cer`` (the judge on the vocoder's rendering of the reference units), the best CER
  this pipeline can show.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from jsonargparse.typing import NonNegativeInt, PositiveInt

from spiritlm.cli import flags_from
from spiritlm.errors import UserError
from spiritlm.evals.prompts import fit_prompt, join_prompt, render_pair
from spiritlm.formats import SPEECH_TOKEN_RE, deduplicate

if TYPE_CHECKING:
    from spiritlm.evals.common import EvalModel, EvalResult

logger = logging.getLogger(__name__)


@dataclass
class TtsConfig:
    """Settings of :func:`run_tts`.

    Attributes:
        shots: examples per prompt (paper: 10; fewer when the context is full).
        seed: seed of the shot draws (and of sampling).
        do_sample: sample (temperature 0.8, top_p 0.95) instead of greedy decoding.
        temperature: sampling temperature.
        top_p: nucleus mass.
        max_new_tokens: ceiling of a generation's budget, min(ceiling, 2 x reference tokens + 10) (tokens).
        length_ratio: budget relative to the reference's token count (+10).
        max_items: at most this many targets (default: all).
        batch_size: rows decoded together.
        speaker: vocoder speaker (Meta's default 2; falls back to 0 with a note on a smaller vocoder).

    The fields with a flag are ``spiritlm eval tts``'s (:func:`spiritlm.cli.flags_from`): one declaration.
    """

    shots: NonNegativeInt = 10
    seed: int = 0
    do_sample: bool = False
    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: PositiveInt = 2048
    length_ratio: float = 2.0
    max_items: PositiveInt | None = None
    batch_size: PositiveInt = 16
    speaker: int | str = 2


def build_tts_prompt(target_text: str, shots: Sequence[tuple[str, str]]) -> str:
    """The k-shot prompt: ``shots`` as ``(text, speech token string)`` pairs, then the target's text and ``[Speech]``.

    >>> build_tts_prompt("a cat", [("a dog", "[Hu1][Hu2]")])
    '[Text]a dog[Speech][Hu1][Hu2][Text]a cat[Speech]'
    """
    return join_prompt([render_pair("text", t, "speech", s) for t, s in shots], render_pair("text", target_text, "speech", ""))


def hubert_sequence(speech: str) -> list[str]:
    """The deduplicated HuBERT unit ids of a token string (pitch and style tokens dropped)."""
    units = [m.group(2) for m in SPEECH_TOKEN_RE.finditer(speech) if m.group(1) == "Hu"]
    return deduplicate(units)[0]


def _rolled(values: Sequence[Any]) -> list[Any]:
    return list(values[1:]) + list(values[:1]) if len(values) > 1 else list(values)


@dataclass
class TtsInputs:
    """The inputs of :func:`run_tts`: items, their units and the judge that listens to the outputs.

    Attributes:
        targets: manifest dicts (``id``, ``text``, ``audio``) to synthesise.
        pool: manifest dicts the shots are drawn from.
        units: unit rows by id or audio path (:func:`spiritlm.units_jsonl.load_units`).
        asr_judge: transcribes the vocoded outputs (None: only the unit edit rate).
        judges_metrics: the judges' own scores (``judges_metrics.json``), copied into ``metrics.json``.
        extra_config: recorded under ``metrics.json`` ``config`` (the command's file paths).
    """

    targets: Sequence[dict]
    pool: Sequence[dict]
    units: dict[str, dict]
    asr_judge: Any = None
    judges_metrics: dict | None = None
    extra_config: dict | None = None


def run_tts(model: EvalModel, inputs: TtsInputs, config: TtsConfig | None = None, out_dir: str | os.PathLike | None = None,
            *, progress: bool = False) -> EvalResult:
    """Few-shot TTS of ``inputs.targets`` with shots from ``inputs.pool``.

    Targets and shots without units are skipped (counted in ``skipped``); without a vocoder or
    an ASR judge only the unit edit rate is reported.

    Args:
        model: from :func:`~spiritlm.evals.common.load_eval_model` (a vocoder for the CER).
        inputs: the items, their units and the ASR judge.
        config: the settings (default :class:`TtsConfig`).
        out_dir: output folder (None: only return the result).
        progress: tqdm bar of the decoding.

    Returns:
        :class:`spiritlm.evals.common.EvalResult` (task ``tts``); written to ``out_dir`` when given.
    """
    from spiritlm.evals.common import EvalResult, edit_counts, write_eval_outputs
    from spiritlm.evals.engine import Throughput, allowed_with, generate_by_budget, text_stop_ids

    cfg = config or TtsConfig()
    targets, pool, units, asr_judge = inputs.targets, inputs.pool, inputs.units, inputs.asr_judge
    judges_metrics, extra_config = inputs.judges_metrics, inputs.extra_config
    lm = model.lm
    tok = lm.tokenizer
    skipped: dict[str, int] = {}
    tgts = _with_speech(targets, units, model.expressive, skipped)
    if cfg.max_items:
        tgts = tgts[: cfg.max_items]
    shots_pool = _with_speech(pool, units, model.expressive, skipped)
    if not tgts:
        raise UserError("no TTS target has units and text (--units, --manifest)")
    items, prompts, budgets, shot_ids = _tts_prompts(tok, tgts, shots_pool, cfg, lm.config.max_seq_len, skipped)
    stops = text_stop_ids(tok)
    throughput = Throughput()
    t0 = time.time()
    outs = generate_by_budget(lm, prompts, budgets, throughput, allowed=allowed_with(lm, "speech", stops), do_sample=cfg.do_sample,
                              temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed, batch_size=cfg.batch_size, stop_ids=stops,
                              progress=progress)
    stop_set = set(stops) | {tok.eos_id}
    hyps = []
    for ids in outs:
        while ids and ids[-1] in stop_set:
            ids = ids[:-1]
        hyps.append("".join(m.group(0) for m in SPEECH_TOKEN_RE.finditer(tok.decode(ids))))
    unit_counts = [edit_counts(" ".join(hubert_sequence(it["speech"])), " ".join(hubert_sequence(h)), "word") for it, h in zip(items, hyps)]
    unit_chance = [edit_counts(" ".join(hubert_sequence(a["speech"])), " ".join(hubert_sequence(b["speech"])), "word")
                   for a, b in zip(items, _rolled(items))]
    metrics: dict[str, Any] = {}
    notes: list[str] = []
    if model.vocoder is not None and asr_judge is not None:
        transcripts, char_counts = _judge_speech_outputs(model.vocoder, asr_judge, items, hyps, cfg, metrics, notes)
    else:
        transcripts, char_counts = [None] * len(items), [None] * len(items)
        notes.append("cer not computed: " + ("no vocoder (--vocoder)" if model.vocoder is None else "no ASR judge (--judges or --asr_judge)"))
    metrics["unit_edit_rate"] = _rate(unit_counts, cfg.seed, _ratio(unit_chance), empty_output_rate=1.0)
    metrics["skipped"] = skipped
    metrics["notes"] = notes
    metrics["mean_shots"] = float(np.mean([len(s) for s in shot_ids])) if shot_ids else 0.0
    if judges_metrics and "asr" in judges_metrics:
        metrics["judges"] = {"asr": judges_metrics["asr"]}
    metrics["config"] = {"model": getattr(model, "name", ""), **asdict(cfg), **(extra_config or {})}
    rows = []
    for i, it in enumerate(items):
        cc = char_counts[i]
        rows.append({
            "id": str(it["id"]), "shot_ids": shot_ids[i], "seed": cfg.seed, "text": it["text"], "output": hyps[i],
            "transcript": transcripts[i], "char_errors": cc[0] if cc else None, "chars": cc[1] if cc else None,
            "unit_errors": unit_counts[i][0], "units": unit_counts[i][1],
            "score": (cc[0] / cc[1] if cc and cc[1] else None),
        })
    thr = throughput.as_dict()
    thr["wall_seconds"] = round(time.time() - t0, 2)
    result = EvalResult("tts", metrics, rows, thr)
    if out_dir is not None:
        write_eval_outputs(out_dir, result)
    return result


def _with_speech(items: Sequence[dict], units: dict[str, dict], expressive: bool, skipped: dict[str, int]) -> list[dict]:
    """The items with units and text, each with its ``speech`` token string; the others counted in ``skipped``."""
    from spiritlm.evals.common import speech_string, units_of

    out = []
    for it in items:
        row = units_of(it, units)
        if row is None or not it.get("text", "").strip():
            skipped["no_units_or_text"] = skipped.get("no_units_or_text", 0) + 1
            continue
        out.append({**it, "speech": speech_string(row, expressive)})
    return out


def _tts_prompts(tok: Any, tgts: Sequence[dict], shots_pool: Sequence[dict], cfg: TtsConfig, ctx: int,
                 skipped: dict[str, int]) -> tuple[list[dict], list[list[int]], list[int], list[list[str]]]:
    """``(targets kept, prompt ids, budgets, shot ids)``; a target whose prompt leaves no budget is counted in ``skipped``.

    A budget is ``length_ratio`` times the reference's tokens (+10) under ``max_new_tokens``,
    rounded up to a multiple of 25 tokens: rows with equal budgets decode in one batch.
    """
    from spiritlm.evals.common import draw_shots
    from spiritlm.evals.engine import answer_budget

    items, prompts, budgets, shot_ids = [], [], [], []
    for it in tgts:
        budget = answer_budget(len(tok.encode(it["speech"])), cfg.max_new_tokens, cfg.length_ratio)
        shots = draw_shots(shots_pool, cfg.shots, cfg.seed, str(it["id"])) if cfg.shots else []
        ids, k = fit_prompt(tok, [render_pair("text", s["text"], "speech", s["speech"]) for s in shots],
                            render_pair("text", it["text"], "speech", ""), max_len=ctx, reserve=budget)
        if k == 0 and len(ids) + budget > ctx:  # ids = BOS + the target: what is left of the context is the budget
            budget = ctx - len(ids)
        if budget <= 0:
            skipped["longer_than_context"] = skipped.get("longer_than_context", 0) + 1
            continue
        items.append(it)
        prompts.append(ids)
        budgets.append(budget)
        shot_ids.append([str(s["id"]) for s in shots[:k]])
    return items, prompts, budgets, shot_ids


def _ratio(counts: Sequence[tuple[int, int]]) -> float:
    from spiritlm.evals.common import ratio_of_sums

    return ratio_of_sums(np.array(counts, dtype=np.float64))


def _rate(counts: Sequence[tuple[int, int]], seed: int, chance: float | None, n: int | None = None, **extra: Any) -> dict:
    """An error rate's metric record: errors / reference units over the items, its bootstrap interval, ``chance``."""
    from spiritlm.evals.common import bootstrap_ci, metric, ratio_of_sums

    arr = np.array(counts, dtype=np.float64)
    return metric(ratio_of_sums(arr), bootstrap_ci(arr, seed=seed, statistic=ratio_of_sums), chance, len(arr) if n is None else n, **extra)


def _judge_speech_outputs(vocoder: Any, asr_judge: Any, items: Sequence[dict], hyps: Sequence[str], cfg: TtsConfig, metrics: dict,
                          notes: list[str]) -> tuple[list[str | None], list[tuple[int, int] | None]]:
    """The ASR judge on the vocoded outputs (``cer``), on the vocoder's resynthesis of the references
    (``resynth_cer``) and on the original audio (``judge_cer``); returns each output's transcript and char counts."""
    from spiritlm.audio import AudioError, load_audio
    from spiritlm.evals.common import edit_counts, resolve_speaker
    from spiritlm.generation.outputs import vocode_many

    refs_text = [it["text"] for it in items]
    transcripts: list[str | None] = [None] * len(items)
    speaker, speaker_note = resolve_speaker(vocoder, cfg.speaker)
    if speaker_note:
        logger.info(f"[eval tts] note: {speaker_note}")
        notes.append(speaker_note)
    nonempty = [i for i, h in enumerate(hyps) if h]
    stats: dict[str, int] = {}
    got, errors = vocode_many(vocoder, [hyps[i] for i in nonempty], speaker, stats)
    keys = sorted(got)
    for k, t in zip(keys, asr_judge.transcribe([got[k] for k in keys]) if keys else []):
        transcripts[nonempty[k]] = t
    if errors:
        notes.append(f"the vocoder refused {len(errors)} outputs (judged as empty transcripts): {errors[0]}")
    char_counts: list[tuple[int, int] | None] = [edit_counts(r, t or "", "char") for r, t in zip(refs_text, transcripts)]
    chance = _ratio([edit_counts(a, b, "char") for a, b in zip(refs_text, _rolled(refs_text))])
    metrics["cer"] = _rate(char_counts, cfg.seed, chance, len(items), empty_outputs=len(items) - len(nonempty),  # type: ignore[arg-type]
                           vocoder_refused=len(errors), vocoder_filled=stats.get("filled", 0), empty_output_rate=1.0)
    got, errors = vocode_many(vocoder, [it["speech"] for it in items], speaker)
    keys = sorted(got)
    if keys:
        metrics["resynth_cer"] = _rate([edit_counts(refs_text[k], t, "char") for k, t in zip(keys, asr_judge.transcribe([got[k] for k in keys]))],
                                       cfg.seed, None)
    own, own_refs = [], []
    for it in items:
        try:
            own.append(load_audio(it["audio"]))
            own_refs.append(it["text"])
        except (AudioError, KeyError, TypeError):
            continue
    if own:
        metrics["judge_cer"] = _rate([edit_counts(r, t, "char") for r, t in zip(own_refs, asr_judge.transcribe(own))], cfg.seed, None)
    return transcripts, char_counts


@flags_from(TtsConfig, "shots", "seed", "do_sample", "max_new_tokens", "max_items", "batch_size")
def tts_command(
    model: str,
    manifest: str,
    units: str,
    out: str,
    judges: str | None = None,
    asr_judge: str | None = None,
    vocoder: str | None = None,
    split: str = "test",
    shot_split: str = "train",
    speaker: str = "2",
    device: str = "cpu",
    threads: NonNegativeInt = 0,
    overwrite: bool = False,
    **settings: Any,
) -> None:
    """Few-shot TTS: [Text]…[Speech]… prompts, generated units → vocoder → ASR judge → CER; unit edit rate.

    Example: ``spiritlm eval tts --model demo_out/lm/tiny-interleaved --vocoder demo_out/vocoder
    --manifest demo_out/corpus/manifest.jsonl --units demo_out/units.jsonl --judges demo_out/judges --out demo_out/eval/tts``

    Args:
        model: the LM folder (Hugging Face, run or checkpoint folder).
        manifest: corpus manifest (targets from --split, shots from --shot_split).
        units: Meta units JSONL of the manifest's audio.
        out: output folder (metrics.json, predictions.jsonl).
        judges: folder of ``spiritlm eval judges`` (its asr/ is the ASR judge).
        asr_judge: an ASR judge folder (ours or a Hugging Face ASR model) instead of --judges'.
        vocoder: vocoder folder (without it only the unit edit rate is measured).
        split: targets' split.
        shot_split: split the shots come from.
        speaker: vocoder speaker, row number or name (Meta's default 2; 0 with a note on a smaller vocoder).
        device: cpu or cuda.
        threads: CPU threads of torch, BLAS and OpenMP (0: leave them as they are).
        overwrite: replace a finished evaluation in OUT (one holding metrics.json).
    """
    from spiritlm.evals.common import (check_eval_output, check_model_paths, check_units_match, load_eval_model,
                                       load_manifest_items)
    from spiritlm.units_jsonl import load_units

    # files and flags first: a typo costs a second, not the imports of torch and the model
    check_eval_output(out, overwrite)
    targets = load_manifest_items(manifest, split)
    pool = load_manifest_items(manifest, shot_split) if settings["shots"] else []
    unit_rows = load_units(units)
    asr_dir = asr_judge or (str(Path(judges) / "asr") if judges else None)
    if asr_dir and not Path(asr_dir).is_dir():
        raise UserError(f"{asr_dir}: no such ASR judge directory ({'--asr_judge' if asr_judge else '--judges'})")
    check_model_paths(model, vocoder=vocoder)
    check_units_match(load_manifest_items(manifest), unit_rows, manifest, units)

    from spiritlm.judges import load_judges_metrics
    from spiritlm.judges.models import load_asr_judge
    from spiritlm.numerics import threads as pinned_threads

    cfg = TtsConfig(**settings, speaker=int(speaker) if str(speaker).isdigit() else speaker)
    with pinned_threads(threads):
        em = load_eval_model(model, vocoder=vocoder, device=device)
        judge = load_asr_judge(asr_dir, device) if asr_dir else None
        inputs = TtsInputs(targets, pool, unit_rows, asr_judge=judge, judges_metrics=load_judges_metrics(judges) if judges else None,
                           extra_config={"manifest": str(manifest), "units": str(units), "vocoder": vocoder, "asr_judge": asr_dir})
        run_tts(em, inputs, cfg, out)
