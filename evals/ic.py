"""Few-shot intent classification from speech: ``[Speech]<units>[Text]<intent name>`` × k, then the target.

The prompt (paper: k = 30) is::

    <s>[Speech]<units of shot 1>[Text]set alarm[Speech]<units of shot 2>[Text]play music …
       [Speech]<the target's units>[Text]

An intent's name is its label with underscores as spaces (``set_alarm`` → ``set alarm``). Shots
come from the shot split (seeded by ``(seed, target id)``, never the target) and are dropped from
the end when the prompt would not fit in the model's context: the tiny demo model (512 tokens)
holds about ten utterances, so k = 30 is clamped there, and ``config.shots_used_*`` says how many
were used.

Two predictions per item:

* **likelihood** (headline ``accuracy``): every label name followed by ``[Speech]`` (what follows
  an answer in the shots, so that ``volume up`` cannot win by being a prefix) is scored as a
  continuation of the prompt (batched ``SpiritLM.score_continuations``); the most likely label is
  the prediction;
* **generation** (``accuracy_generation``): greedy decoding until a marker or EOS; the answer
  counts when, normalised, it equals a label name.

Chance: ``1 / number of labels`` (``chance``) and the majority class of the shot split
(``majority``: the accuracy of always answering the most frequent training intent).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass

import numpy as np
from jsonargparse.typing import NonNegativeInt, PositiveInt

from spiritlm.errors import UserError
from spiritlm.evals.common import (
    EvalModel,
    EvalResult,
    ManifestInputs,
    bootstrap_ci,
    check_speech_vocabulary,
    draw_shots,
    load_manifest_items,
    metric,
    normalize_text,
    select_items,
    with_speech_strings,
    write_eval_outputs,
)
from spiritlm.evals.engine import Throughput, allowed_with, choose_by_likelihood, clean_answer, text_stop_ids
from spiritlm.evals.prompts import fit_prompt, render_pair
from spiritlm.units_jsonl import load_units

__all__ = ["IcConfig", "label_name", "run_ic"]


def label_name(label: str) -> str:
    """The words an intent label is written with in prompts: ``set_alarm`` → ``set alarm``."""
    return label.replace("_", " ")


@dataclass
class IcConfig:
    """Settings of :func:`run_ic`.

    Attributes:
        shots: in-context examples (clamped to the context; paper: 30).
        seed: seeds shots and the item sample.
        split: the split evaluated.
        shot_split: the split shots come from.
        max_items: a seeded sample of this many items (None: all).
        batch_size: sequences per forward pass.
        generation: also predict by greedy generation.

    The fields with a flag are ``spiritlm eval ic``'s (:func:`spiritlm.cli.flags_from`): one declaration.
    """

    shots: NonNegativeInt = 30
    seed: int = 0
    split: str = "test"
    shot_split: str = "train"
    max_items: PositiveInt | None = None
    batch_size: PositiveInt = 16
    generation: bool = True


def run_ic(model: EvalModel, inputs: ManifestInputs, config: IcConfig | None = None, out_dir: str | os.PathLike | None = None,
           *, progress: bool = True) -> EvalResult:
    """k-shot intent classification of a manifest split's items that carry an ``intent``.

    Args:
        model: from :func:`~spiritlm.evals.common.load_eval_model`.
        inputs: the manifest (``intent``, ``split``) and the units of its audio.
        config: the settings (default :class:`IcConfig`).
        out_dir: output folder (``metrics.json``, ``predictions.jsonl``; None: only return the result).
        progress: tqdm bars.
    """
    cfg = config or IcConfig()
    manifest, units = inputs.manifest, inputs.units
    shots, seed, split, shot_split, max_items = cfg.shots, cfg.seed, cfg.split, cfg.shot_split, cfg.max_items
    batch_size, generation = cfg.batch_size, cfg.generation
    lm = model.lm
    tok = lm.tokenizer
    unit_rows = load_units(units)
    labelled = [it for it in load_manifest_items(manifest, split) if it.get("intent")]
    if not labelled:
        raise UserError(f"{manifest}: no {split!r} utterance has an 'intent' (--manifest)")
    targets, missing = with_speech_strings(select_items(labelled, max_items, seed), unit_rows, model.expressive)
    pool, _ = with_speech_strings([it for it in load_manifest_items(manifest, shot_split) if it.get("intent")], unit_rows,
                          model.expressive)
    if not pool:
        raise UserError(f"{manifest}: no {shot_split!r} utterance with an intent has units in {units} (--units)")
    pool_items = [p for p, _ in pool]
    pool_speech = {str(p["id"]): s for p, s in pool}
    labels = sorted({p["intent"] for p in pool_items} | {t["intent"] for t, _ in targets})
    cands = [tok.encode(label_name(lab)) + [tok.speech_marker_id] for lab in labels]
    reserve = max(len(c) for c in cands) + 1
    max_len = lm.config.max_seq_len

    if targets:
        check_speech_vocabulary(model, targets[0][1], units)
    skipped = [{"id": i, "reason": "no units"} for i in missing]
    prompts, records = _ic_prompts(tok, targets, pool_items, pool_speech, skipped, shots=shots, seed=seed, max_len=max_len,
                                   reserve=reserve)
    if not prompts:
        raise UserError(f"{manifest}: no {split!r} intent item could be evaluated ({len(skipped)} skipped) (--units)")

    thr = Throughput()
    best, table = choose_by_likelihood(lm, prompts, cands, batch_size=batch_size, progress=progress)
    thr.add(lm.last_stats)
    gen_pred: list[str | None] = [None] * len(prompts)
    gen_text: list[str] | None = None
    if generation:
        stop = text_stop_ids(tok)
        outs = lm.generate_batch_ids(prompts, allowed=allowed_with(lm, "text", stop), max_new_tokens=reserve + 2, do_sample=False,
                                     batch_size=batch_size, stop_ids=stop, progress=progress)
        thr.add(lm.last_stats)
        by_name = {normalize_text(label_name(lab)): lab for lab in labels}
        gen_text = [clean_answer(tok, ids, stop) for ids in outs]
        gen_pred = [by_name.get(normalize_text(t)) for t in gen_text]

    predictions, correct, correct_gen, confusion = _ic_predictions(records, best, table, labels, prompts, seed, gen_text, gen_pred)
    metrics = _ic_metrics(model, cfg, manifest, units, predictions, records, pool_items, labels, correct, correct_gen,
                          gen_pred, confusion, skipped, max_len)
    result = EvalResult("ic", metrics, predictions, thr.as_dict())
    if out_dir is not None:
        write_eval_outputs(out_dir, result)
    return result


def _ic_metrics(model: EvalModel, cfg: IcConfig, manifest, units, predictions: list[dict], records: list, pool_items: list[dict],
                labels: list[str], correct: list[float], correct_gen: list[float], gen_pred: list[str | None], confusion,
                skipped: list[dict], max_len: int) -> dict:
    """``run_ic``'s metrics.json: accuracy by likelihood (and by generation) with its interval,
    chance and majority baselines, the confusion matrix and the run's settings."""
    seed, split, shot_split, shots, max_items, generation = cfg.seed, cfg.split, cfg.shot_split, cfg.shots, cfg.max_items, cfg.generation
    n = len(predictions)
    majority_label, _ = Counter(p["intent"] for p in pool_items).most_common(1)[0]
    majority = [float(item["intent"] == majority_label) for item, _ in records]
    chance = 1.0 / len(labels)
    shots_used = [len(p["shot_ids"]) for p in predictions]
    metrics = {
        "accuracy": metric(float(np.mean(correct)), bootstrap_ci(correct, seed=seed), chance, n,
                           majority=round(float(np.mean(majority)), 6), majority_label=majority_label,
                           method="likelihood of each label name"),
    }
    if generation:
        metrics["accuracy_generation"] = metric(float(np.mean(correct_gen)), bootstrap_ci(correct_gen, seed=seed),
                                                chance, n, method="greedy generation, exact label name",
                                                invalid=sum(g is None for g in gen_pred))
    metrics["labels"] = labels
    metrics["confusion_matrix"] = {"rows": "reference", "columns": "prediction (likelihood)",
                                   "matrix": confusion.tolist()}
    metrics["config"] = {
        "model": model.name, "manifest": str(manifest), "units": str(units), "split": split, "shot_split": shot_split,
        "seed": seed, "shots": shots, "shots_used_min": min(shots_used),
        "shots_used_mean": round(float(np.mean(shots_used)), 3), "shots_used_max": max(shots_used),
        "max_seq_len": max_len, "max_items": max_items, "skipped": len(skipped), "skipped_items": skipped[:50],
    }
    return metrics


def _ic_prompts(tok, targets, pool_items, pool_speech, skipped: list[dict], *, shots: int, seed: int, max_len: int,
                reserve: int) -> tuple[list[list[int]], list[tuple[dict, list[str]]]]:
    """``(prompt ids, (item, shot ids))`` of the targets that leave ``reserve`` tokens for a label; the others go to ``skipped``."""
    prompts, records = [], []
    for item, speech in targets:
        chosen = draw_shots(pool_items, shots, seed, str(item["id"]))
        ids, k = fit_prompt(tok, [render_pair("speech", pool_speech[str(s["id"])], "text", label_name(s["intent"])) for s in chosen],
                            render_pair("speech", speech, "text", ""), max_len=max_len, reserve=reserve)
        if k == 0 and len(ids) + reserve > max_len:  # ids = BOS + the target: no room left for a label
            skipped.append({"id": str(item["id"]), "reason": "target does not fit in max_seq_len"})
            continue
        prompts.append(ids)
        records.append((item, [str(s["id"]) for s in chosen[:k]]))
    return prompts, records


def _ic_predictions(records, best, table, labels, prompts, seed, gen_text, gen_pred):
    """Prediction rows, per-item correctness (likelihood, generation) and the confusion matrix (reference x prediction)."""
    index = {lab: i for i, lab in enumerate(labels)}
    confusion = np.zeros((len(labels), len(labels)), dtype=int)
    correct, correct_gen, predictions = [], [], []
    for r, ((item, shot_ids), b, row) in enumerate(zip(records, best, table)):
        pred = labels[b]
        confusion[index[item["intent"]], b] += 1
        correct.append(float(pred == item["intent"]))
        correct_gen.append(float(gen_pred[r] == item["intent"]))
        p = {"id": str(item["id"]), "shot_ids": shot_ids, "seed": seed, "prompt_tokens": len(prompts[r]),
             "reference": item["intent"], "output": pred,
             "score": {lab: round(float(s), 4) for lab, s in zip(labels, row)}}
        if gen_text is not None:
            p["output_generation"] = gen_text[r]
            p["prediction_generation"] = gen_pred[r]
        predictions.append(p)
    return predictions, correct, correct_gen, confusion
