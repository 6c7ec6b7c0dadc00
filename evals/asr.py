"""Few-shot speech recognition with the LM: ``[Speech]<units>[Text]<transcript>`` × k, then the target.

The prompt (paper: k = 10, LibriSpeech clean) is::

    <s>[Speech][Hu12][Hu7]…[Text]the cat sat on the mat[Speech][Hu3]…[Text]a dog ran   (k shots)
       [Speech]<the target's units>[Text]                                               (target)

The shots are drawn from the shot split (``train``) with :func:`spiritlm.evals.common.draw_shots`
(seeded by ``(seed, target id)``, never the target itself). Shots that would not leave
``max_new_tokens`` free in the model's context are dropped from the end (the number used is
recorded per item). Decoding is greedy over text pieces, markers and EOS, batched
(``SpiritLM.generate_batch_ids``); an answer ends at the next modality marker, EOS or a newline,
which is what the shots teach (Meta's ``Spiritlm.generate`` bans the markers in text outputs, so
an answer there runs on to EOS or the budget: evals/README.md). Each answer's budget comes from
its reference: ``min(max_new_tokens, 2 × reference tokens + 10)``, rounded up to a multiple of 25
(rows with equal budgets decode together); the default ceiling, 384 tokens, is above twice the
longest LibriSpeech transcript, so it never cuts a right answer. ``config.hit_budget`` counts
the answers that ran to their budget without stopping. WER and CER are computed with jiwer after
:func:`~spiritlm.evals.common.normalize_text`, with 95% bootstrap intervals over utterances.

Chance level: a model that ignores the speech and answers with a transcript of the training
distribution. For each target we take the transcript of one seeded random shot-split utterance as
the hypothesis; its corpus WER/CER is ``chance``. (The empty answer gives WER 1.0 exactly; it is
recorded as ``empty_wer``.)
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from jsonargparse.typing import NonNegativeInt, PositiveFloat, PositiveInt

from spiritlm.errors import UserError
from spiritlm.evals.common import (
    EvalModel,
    EvalResult,
    ManifestInputs,
    bootstrap_ci,
    check_speech_vocabulary,
    draw_shots,
    edit_counts,
    load_manifest_items,
    metric,
    ratio_of_sums,
    select_items,
    with_speech_strings,
    write_eval_outputs,
)
from spiritlm.evals.engine import Throughput, allowed_with, answer_budget, clean_answer, generate_by_budget, text_stop_ids
from spiritlm.evals.prompts import fit_prompt, join_prompt, render_pair
from spiritlm.units_jsonl import load_units

__all__ = ["AsrConfig", "build_asr_prompt", "run_asr"]


def build_asr_prompt(shots: Sequence[tuple[str, str]], target_speech: str) -> str:
    """``[(speech string, transcript), …]`` shots + the target's speech string → prompt text (no BOS).

    >>> build_asr_prompt([("[Hu1][Hu2]", "hi there")], "[Hu3]")
    '[Speech][Hu1][Hu2][Text]hi there[Speech][Hu3][Text]'
    """
    return join_prompt([render_pair("speech", speech, "text", text) for speech, text in shots],
                       render_pair("speech", target_speech, "text", ""))


@dataclass
class AsrConfig:
    """Settings of :func:`run_asr`.

    Attributes:
        shots: in-context examples per target (clamped to what fits in ``max_seq_len``).
        seed: seeds the shots, the item sample and the chance baseline.
        split: the split evaluated.
        shot_split: the split shots come from.
        max_items: evaluate a seeded sample of this many items (None: all).
        batch_size: prompts decoded together.
        max_new_tokens: ceiling of an answer's budget (tokens).
        length_ratio: an answer's budget is ``length_ratio × reference tokens + 10`` (then the ceiling).

    The fields with a flag are ``spiritlm eval asr``'s (:func:`spiritlm.cli.flags_from`): one declaration.
    """

    shots: NonNegativeInt = 10
    seed: int = 0
    split: str = "test"
    shot_split: str = "train"
    max_items: PositiveInt | None = None
    batch_size: PositiveInt = 16
    max_new_tokens: PositiveInt = 384
    length_ratio: PositiveFloat = 2.0


def run_asr(model: EvalModel, inputs: ManifestInputs, config: AsrConfig | None = None, out_dir: str | os.PathLike | None = None,
            *, progress: bool = True) -> EvalResult:
    """k-shot ASR on a manifest split; with ``out_dir``, writes ``metrics.json`` and ``predictions.jsonl`` there.

    Args:
        model: from :func:`~spiritlm.evals.common.load_eval_model`.
        inputs: the manifest (``text``, ``split``) and the units of its audio.
        config: the settings (default :class:`AsrConfig`).
        out_dir: output folder (None: only return the result).
        progress: tqdm bar.

    Items without units, or whose target alone does not fit, are skipped and counted
    (``config.skipped``); :class:`UserError` if every item is skipped.
    """
    cfg = config or AsrConfig()
    manifest, units = inputs.manifest, inputs.units
    shots, seed, split, shot_split, max_items = cfg.shots, cfg.seed, cfg.split, cfg.shot_split, cfg.max_items
    batch_size, max_new_tokens, length_ratio = cfg.batch_size, cfg.max_new_tokens, cfg.length_ratio
    lm = model.lm
    tok = lm.tokenizer
    unit_rows = load_units(units)
    targets, missing_t = with_speech_strings(select_items(load_manifest_items(manifest, split), max_items, seed), unit_rows,
                                     model.expressive)
    pool, _ = with_speech_strings(load_manifest_items(manifest, shot_split), unit_rows, model.expressive)
    if shots > 0 and not pool:
        raise UserError(f"{manifest}: no {shot_split!r} utterance has units in {units} (--units)")
    pool_items = [p for p, _ in pool]
    max_len = lm.config.max_seq_len

    if targets:
        check_speech_vocabulary(model, targets[0][1], units)
    skipped = [{"id": i, "reason": "no units"} for i in missing_t]
    prompts, budgets, records = _asr_prompts(tok, targets, pool, skipped, shots=shots, seed=seed, max_len=max_len,
                                             max_new_tokens=max_new_tokens, length_ratio=length_ratio)
    if not prompts:
        raise UserError(f"{manifest}: no {split!r} item could be evaluated ({len(skipped)} skipped: "
                        f"{skipped[0]['reason'] if skipped else 'none found'}) (--manifest/--units)")

    stop = text_stop_ids(tok)
    thr = Throughput()
    outs = generate_by_budget(lm, prompts, budgets, thr, allowed=allowed_with(lm, "text", stop), do_sample=False,
                              batch_size=batch_size, stop_ids=stop, progress=progress)
    stop_set = set(stop) | {tok.eos_id}
    hit_budget = sum(1 for o, b, p in zip(outs, budgets, prompts)
                     if not (o and o[-1] in stop_set) and len(o) >= min(b, max_len - len(p)))
    predictions, counts = _score_answers(tok, records, outs, prompts, budgets, stop, pool_items, seed)
    n = len(predictions)
    shots_used = [len(p["shot_ids"]) for p in predictions]
    metrics = {
        **{name: metric(ratio_of_sums(np.asarray(counts[name], float)),
                        bootstrap_ci(counts[name], seed=seed, statistic=ratio_of_sums),
                        ratio_of_sums(np.asarray(counts[f"{name}_chance"], float)), n, lower_is_better=True)
           for name in ("wer", "cer")},
        "empty_wer": 1.0,
        "chance_method": "hypothesis = transcript of a seeded random shot-split utterance (speech ignored)",
        "config": {
            "model": model.name, "manifest": str(manifest), "units": str(units), "split": split,
            "shot_split": shot_split, "seed": seed, "shots": shots, "shots_used_min": min(shots_used),
            "shots_used_mean": round(float(np.mean(shots_used)), 3), "shots_used_max": max(shots_used),
            "max_seq_len": max_len, "max_new_tokens": max_new_tokens, "length_ratio": length_ratio,
            "budget": f"min({max_new_tokens}, {length_ratio} x reference tokens + 10), rounded up to 25",
            "hit_budget": hit_budget, "max_items": max_items,
            "decoding": "greedy", "skipped": len(skipped), "skipped_items": skipped[:50],
        },
    }
    result = EvalResult("asr", metrics, predictions, thr.as_dict())
    if out_dir is not None:
        write_eval_outputs(out_dir, result)
    return result


def _asr_prompts(tok, targets: Sequence[tuple[dict, str]], pool: Sequence[tuple[dict, str]], skipped: list[dict], *, shots: int,
                 seed: int, max_len: int, max_new_tokens: int, length_ratio: float) -> tuple[list[list[int]], list[int], list[tuple[dict, list[str]]]]:
    """``(prompt ids, answer budgets, (item, shot ids))`` of the targets that fit; the others are added to ``skipped``."""
    pool_items = [p for p, _ in pool]
    pool_speech = {str(p["id"]): s for p, s in pool}
    prompts, budgets, records = [], [], []
    for item, speech in targets:
        chosen = draw_shots(pool_items, shots, seed, str(item["id"])) if shots > 0 else []
        budget = answer_budget(len(tok.encode(item["text"])), max_new_tokens, length_ratio)
        ids, k = fit_prompt(tok, [render_pair("speech", pool_speech[str(s["id"])], "text", s["text"]) for s in chosen],
                            render_pair("speech", speech, "text", ""), max_len=max_len, reserve=budget)
        if k == 0 and len(ids) >= max_len:  # ids = BOS + the target: it fills the context alone
            skipped.append({"id": str(item["id"]), "reason": "target does not fit in max_seq_len"})
            continue
        prompts.append(ids)
        budgets.append(budget)
        records.append((item, [str(s["id"]) for s in chosen[:k]]))
    return prompts, budgets, records


def _score_answers(tok, records, outs, prompts, budgets, stop, pool_items, seed) -> tuple[list[dict], dict[str, list]]:
    """Prediction rows and the word/char edit counts of each answer and of the chance hypothesis
    (a seeded random shot-split transcript): ``{"wer", "cer", "wer_chance", "cer_chance"}``."""
    chance_rng = random.Random(f"{seed}:asr-chance")
    counts: dict[str, list] = {"wer": [], "cer": [], "wer_chance": [], "cer_chance": []}
    predictions = []
    for (item, shot_ids), ids, prompt, budget in zip(records, outs, prompts, budgets):
        hyp = clean_answer(tok, ids, stop)
        ref = item["text"]
        w, c = edit_counts(ref, hyp, "word"), edit_counts(ref, hyp, "char")
        guess = chance_rng.choice(pool_items)["text"] if pool_items else ""
        counts["wer"].append(w)
        counts["cer"].append(c)
        counts["wer_chance"].append(edit_counts(ref, guess, "word"))
        counts["cer_chance"].append(edit_counts(ref, guess, "char"))
        predictions.append({
            "id": str(item["id"]), "shot_ids": shot_ids, "seed": seed, "prompt_tokens": len(prompt), "budget": budget,
            "reference": ref, "output": hyp,
            "score": {"word_errors": w[0], "ref_words": w[1], "char_errors": c[0], "ref_chars": c[1]},
        })
    return predictions, counts

