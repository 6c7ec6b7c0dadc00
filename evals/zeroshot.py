"""Zero-shot likelihood tasks: lexical (sWUGGY-style), syntactic (sBLIMP-style), story endings (StoryCloze-style).

Each task is a list of *groups* (usually pairs) of candidates, exactly one of them correct; the
model prefers the candidate with the highest log-probability (natural log, summed over its
tokens, scored in batches by ``SpiritLM.score_continuations``):

* spoken candidate: ``<s>[Speech]`` then its unit string (``[Hu12][Hu7]…``, deduplicated);
* written candidate: ``<s>[Text]`` then its text.

A group scores 1 when the correct candidate has the strictly highest score and ``1/m`` when it
ties with ``m - 1`` others (scores equal to 1e-4; ZeroSpeech 2021 gives 0.5 to a tied pair);
accuracy is the mean over groups, chance is ``mean(1 / group size)`` (0.5 for pairs).

Layouts read (``--sets DIR``):

* ``DIR/lexical/dev/`` — ZeroSpeech 2021 sWUGGY: ``*.wav`` and ``gold.csv`` with columns
  ``id,filename,voice,frequency,word,correct``: the rows sharing ``id`` (and ``voice``) form a
  group, ``correct`` is 1 for the real word; ``word`` is the written form.
* ``DIR/syntactic/dev/`` — ZeroSpeech 2021 sBLIMP: ``*.wav`` and ``gold.csv`` with columns
  ``id,filename,type,subtype,correct`` (plus ``voice`` when present); a written variant is scored
  when the file has a ``text`` (or ``transcription``) column.
* ``DIR/storycloze/spoken/`` — spoken StoryCloze: ``<story>_correct.wav`` / ``<story>_incorrect.wav``
  (each the whole story with one ending).
* ``DIR/storycloze/written.csv`` — the StoryCloze CSV: ``InputStoryid, InputSentence1..4,
  RandomFifthSentenceQuiz1, RandomFifthSentenceQuiz2, AnswerRightEnding``.

``filename`` may omit ``.wav``. A ``units.jsonl`` (Meta's units, keyed by ``id`` = file stem or by
``audio`` path) next to ``gold.csv`` (or in ``spoken/``) is used instead of tokenizing the WAVs.

Without ``--sets`` the task generates such a folder from the corpus
(:func:`spiritlm.corpus.zeroshot_sets.make_synthetic_sets`) and reads it with the same readers.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from jsonargparse.typing import PositiveInt

from spiritlm.corpus.zeroshot_sets import LEXICAL_COLUMNS, STORYCLOZE_COLUMNS, SYNTACTIC_COLUMNS, make_synthetic_sets
from spiritlm.errors import UserError
from spiritlm.evals.common import (
    EvalModel,
    EvalResult,
    bootstrap_ci,
    metric,
    speech_string,
    units_of,
    write_eval_outputs,
)
from spiritlm.evals.engine import Throughput
from spiritlm.units_jsonl import load_units

__all__ = [
    "Candidate",
    "ZeroshotConfig",
    "ZeroshotInputs",
    "read_storycloze_spoken",
    "read_sets",
    "read_storycloze_written",
    "read_zerospeech_set",
    "run_zeroshot",
]

TASKS = ("lexical", "syntactic", "storycloze")


@dataclass
class Candidate:
    """One scored candidate.

    Attributes:
        task: ``lexical``, ``syntactic`` or ``storycloze``.
        modality: ``spoken`` or ``written``.
        group: id of its group (pair); exactly one candidate of a group is correct.
        key: unique id (the file stem for spoken items).
        correct: whether it is the correct member of its group.
        audio: WAV path (spoken) or None.
        text: the written form (written), or None.
        subtype: category for breakdowns (sBLIMP ``subtype``, sWUGGY ``frequency`` bin), or None.
    """

    task: str
    modality: str
    group: str
    key: str
    correct: bool
    audio: str | None = None
    text: str | None = None
    subtype: str | None = None


# ---------------------------------------------------------------------------------------------
# Readers of the public layouts
# ---------------------------------------------------------------------------------------------


def _read_csv(path: Path, required: Sequence[str], flag: str = "--sets") -> list[tuple[int, dict]]:
    if not path.is_file():
        raise UserError(f"{path}: no such file ({flag})")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise UserError(f"{path}:1: missing column(s) {', '.join(missing)} (has {', '.join(reader.fieldnames or [])}) ({flag})")
        return [(lineno, row) for lineno, row in enumerate(reader, 2)]


def _wav_path(folder: Path, filename: str) -> Path:
    p = folder / filename
    return p if p.suffix == ".wav" else p.with_name(p.name + ".wav")


def _correct(path: Path, lineno: int, value: str) -> bool:
    if value.strip() not in ("0", "1"):
        raise UserError(f"{path}:{lineno}: 'correct' must be 0 or 1, got {value!r} (--sets)")
    return value.strip() == "1"


def read_zerospeech_set(folder: str | os.PathLike, kind: str) -> list[Candidate]:
    """Reads a ZeroSpeech 2021 ``lexical`` (sWUGGY) or ``syntactic`` (sBLIMP) folder (``*.wav`` + ``gold.csv``).

    Returns spoken candidates for every row, plus written ones when the rows carry text
    (sWUGGY's ``word``; a ``text``/``transcription`` column for sBLIMP). Groups are the rows
    sharing ``id`` and ``voice``.

    Raises:
        UserError: missing file or column, bad ``correct`` value, or a group without exactly
            one correct row (``path:line``).
    """
    folder = Path(folder)
    gold = folder / "gold.csv"
    if kind not in ("lexical", "syntactic"):
        raise ValueError(f"kind must be lexical or syntactic, got {kind!r}")
    rows = _read_csv(gold, LEXICAL_COLUMNS if kind == "lexical" else SYNTACTIC_COLUMNS)
    out: list[Candidate] = []
    first_line: dict[str, int] = {}
    for lineno, row in rows:
        group = f"{row['id']}/{row['voice']}" if row.get("voice") else str(row["id"])
        first_line.setdefault(group, lineno)
        correct = _correct(gold, lineno, row["correct"])
        stem = Path(row["filename"]).stem
        subtype = row.get("subtype") if kind == "syntactic" else row.get("frequency")
        out.append(Candidate(kind, "spoken", group, stem, correct, audio=str(_wav_path(folder, row["filename"])),
                             subtype=subtype or None))
        text = row.get("word") if kind == "lexical" else (row.get("text") or row.get("transcription"))
        if text:
            out.append(Candidate(kind, "written", group, stem, correct, text=text, subtype=subtype or None))
    _check_groups(out, gold, first_line)
    return out


def _check_groups(cands: Sequence[Candidate], path: Path, first_line: dict[str, int]) -> None:
    size: Counter = Counter()
    n_correct: Counter = Counter()
    for c in cands:
        if c.modality == "spoken":  # every row gives one spoken candidate
            size[c.group] += 1
            n_correct[c.group] += int(c.correct)
    for group in size:
        if n_correct[group] != 1 or size[group] < 2:
            raise UserError(f"{path}:{first_line[group]}: group {group!r} has {size[group]} rows and {n_correct[group]} "
                            "correct (need at least 2 and exactly 1) (--sets)")


def read_storycloze_spoken(folder: str | os.PathLike) -> list[Candidate]:
    """Spoken StoryCloze: ``<story>_correct.wav`` and ``<story>_incorrect.wav`` per story in ``folder``.

    Raises:
        UserError: no such folder, or a story with only one of its two files.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder (--sets)")
    stories: dict[str, dict[str, Path]] = defaultdict(dict)
    for p in sorted(folder.glob("*.wav")):
        m = re.fullmatch(r"(.+)_(correct|incorrect)", p.stem)
        if m:
            stories[m.group(1)][m.group(2)] = p
    out = []
    for story, files in sorted(stories.items()):
        if set(files) != {"correct", "incorrect"}:
            have = next(iter(files.values()))
            raise UserError(f"{have}: story {story!r} lacks its {'in' if 'correct' in files else ''}correct ending (--sets)")
        for kind in ("correct", "incorrect"):
            out.append(Candidate("storycloze", "spoken", story, files[kind].stem, kind == "correct",
                                 audio=str(files[kind])))
    return out


def read_storycloze_written(path: str | os.PathLike) -> list[Candidate]:
    """The StoryCloze CSV (``InputStoryid, InputSentence1..4, RandomFifthSentenceQuiz1/2, AnswerRightEnding``).

    Each story gives two candidates: the context (the non-empty input sentences) followed by
    each ending.
    """
    path = Path(path)
    out = []
    for lineno, row in _read_csv(path, STORYCLOZE_COLUMNS):
        answer = row["AnswerRightEnding"].strip()
        if answer not in ("1", "2"):
            raise UserError(f"{path}:{lineno}: AnswerRightEnding must be 1 or 2, got {answer!r} (--sets)")
        context = " ".join(row.get(f"InputSentence{i}", "").strip() for i in range(1, 5)).strip()
        story = row["InputStoryid"]
        for j in (1, 2):
            ending = row[f"RandomFifthSentenceQuiz{j}"].strip()
            out.append(Candidate("storycloze", "written", story, f"{story}_{j}", str(j) == answer,
                                 text=f"{context} {ending}".strip()))
    return out


def read_sets(root: str | os.PathLike, tasks: Sequence[str] = TASKS) -> dict[str, list[Candidate]]:
    """All candidates under ``root`` (layouts in the module docstring), by task; absent parts are skipped."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: no such folder (--sets)")
    out: dict[str, list[Candidate]] = {}
    for kind in ("lexical", "syntactic"):
        if kind in tasks and (root / kind / "dev" / "gold.csv").is_file():
            out[kind] = read_zerospeech_set(root / kind / "dev", kind)
    if "storycloze" in tasks:
        cands = []
        if (root / "storycloze" / "spoken").is_dir():
            cands += read_storycloze_spoken(root / "storycloze" / "spoken")
        if (root / "storycloze" / "written.csv").is_file():
            cands += read_storycloze_written(root / "storycloze" / "written.csv")
        if cands:
            out["storycloze"] = cands
    if not out:
        raise UserError(f"{root}: none of lexical/dev/gold.csv, syntactic/dev/gold.csv, storycloze/ found (--sets)")
    return out


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------


def _speech_strings(cands: Sequence[Candidate], model: EvalModel, batch: int = 16) -> tuple[dict[str, str], str | None]:
    """Unit strings of the spoken candidates: from a ``units.jsonl`` beside the WAVs, else the speech tokenizer."""
    need = [c for c in cands if c.modality == "spoken"]
    out: dict[str, str] = {}
    by_folder: dict[Path, list[Candidate]] = defaultdict(list)
    for c in need:
        by_folder[Path(c.audio).parent].append(c)  # type: ignore[arg-type]
    todo: list[Candidate] = []
    for folder, group in by_folder.items():
        units = load_units(folder / "units.jsonl") if (folder / "units.jsonl").is_file() else {}
        for c in group:
            row = units_of({"id": c.key, "audio": c.audio}, units) if units else None
            if row is not None:
                out[c.audio] = speech_string(row, model.expressive)  # type: ignore[index]
            else:
                todo.append(c)
    if todo and model.speech_tokenizer is None:
        return out, f"{len(todo)} spoken items need --speech_tokenizer (or a units.jsonl beside their WAVs)"
    if todo:
        from tqdm import tqdm

        st = model.speech_tokenizer
        for b in tqdm(range(0, len(todo), batch), desc="tokenize", unit="batch"):
            chunk = todo[b: b + batch]
            rows = st.encode_units([c.audio for c in chunk])
            for c, row in zip(chunk, rows):
                out[c.audio] = speech_string(row, model.expressive)  # type: ignore[index]
    return out, None


def _score_groups(cands: Sequence[Candidate], scores: Sequence[float]) -> list[dict]:
    groups: dict[str, list[tuple[Candidate, float]]] = defaultdict(list)
    for c, s in zip(cands, scores):
        groups[c.group].append((c, s))
    out = []
    for group, members in groups.items():
        # scores within 1e-4 nat tie: batched kernels differ from unbatched ones by ~1e-6
        best = max(round(s, 4) for _, s in members)
        top = [c for c, s in members if round(s, 4) == best]
        right = next(c for c, _ in members if c.correct)
        credit = 1.0 / len(top) if right in top else 0.0
        out.append({"group": group, "credit": credit, "chance": 1.0 / len(members), "members": members,
                    "output": top[0].key, "reference": right.key, "subtype": right.subtype})
    return out


def _synthetic_sets(sets_dir: Path, manifest: str | os.PathLike, split: str, seed: int, n: int) -> Path:
    """The synthetic sets of these parameters in ``sets_dir``, made unless a previous run made them."""
    params = {"manifest": str(manifest), "split": split, "seed": seed, "num_pairs": n, "num_voices": 4}
    marker = sets_dir / "synthetic.json"
    if not (marker.is_file() and json.loads(marker.read_text()) == params):
        sets_dir.parent.mkdir(parents=True, exist_ok=True)
        make_synthetic_sets(sets_dir, manifest, split=split, seed=seed, num_pairs=n)
    return sets_dir


def _score_set(model: EvalModel, task: str, modality: str, cands: Sequence[Candidate], *, seed: int, batch_size: int,
               progress: bool, thr: Throughput) -> tuple[dict, list[dict]] | str:
    """``(metric record, prediction rows)`` of one task and modality, or why it was skipped.

    A candidate is scored after ``<s>[Speech]`` or ``<s>[Text]``; a group with a candidate longer
    than the context is left out (``skipped_too_long``).
    """
    lm = model.lm
    tok = lm.tokenizer
    name = f"{task}_{modality}"
    if modality == "spoken":
        strings, problem = _speech_strings(cands, model)
        if problem:
            return f"skipped: {problem}"
        prompt = [tok.bos_id, tok.speech_marker_id]
        conts = [tok.encode(strings[c.audio]) for c in cands]  # type: ignore[index]
    else:
        prompt = [tok.bos_id, tok.text_marker_id]
        conts = [tok.encode(c.text) for c in cands]  # type: ignore[arg-type]
    room = lm.config.max_seq_len - len(prompt)
    too_long = {c.group for c, x in zip(cands, conts) if len(x) > room}
    keep_idx = [i for i, c in enumerate(cands) if c.group not in too_long]
    cands = [cands[i] for i in keep_idx]
    conts = [conts[i] for i in keep_idx]
    if not cands:
        return "skipped: every item is longer than max_seq_len"
    scores = lm.score_continuations([prompt] * len(conts), conts, batch_size=batch_size, progress=progress)
    thr.add(lm.last_stats)
    results = _score_groups(cands, [s.sum_logprob for s in scores])
    credit = [r["credit"] for r in results]
    chance = float(np.mean([r["chance"] for r in results]))
    by_sub: dict[str, list[float]] = defaultdict(list)
    for r in results:
        if r["subtype"] is not None and task == "syntactic":
            by_sub[r["subtype"]].append(r["credit"])
    extra = {"by_subtype": {k: round(float(np.mean(v)), 6) for k, v in sorted(by_sub.items())}} if by_sub else {}
    if too_long:
        extra["skipped_too_long"] = len(too_long)
    rows = [{
        "id": f"{name}/{r['group']}", "task": task, "modality": modality, "shot_ids": [], "seed": seed,
        "reference": r["reference"], "output": r["output"], "correct": r["credit"],
        "score": {c.key: round(float(s), 4) for c, s in r["members"]},
    } for r in results]
    return metric(float(np.mean(credit)), bootstrap_ci(credit, seed=seed), chance, len(results), **extra), rows


@dataclass
class ZeroshotInputs:
    """The inputs of :func:`run_zeroshot`: a folder of sets, or a manifest to generate them from.

    Attributes:
        manifest: the corpus manifest for :func:`~spiritlm.corpus.zeroshot_sets.make_synthetic_sets` (when ``sets`` is None).
        sets: a folder in the public layouts (module docstring).
    """

    manifest: str | os.PathLike | None = None
    sets: str | os.PathLike | None = None


@dataclass
class ZeroshotConfig:
    """Settings of :func:`run_zeroshot`.

    Attributes:
        seed: seeds the synthetic sets and the group sample.
        max_items: at most this many groups per task and modality (seeded sample).
        batch_size: sequences per forward pass.
        split: manifest split whose words seed the lexical set.
        tasks: subset of ``lexical``, ``syntactic``, ``storycloze``.
        num_pairs: size of each generated set (default ``max_items`` or 100).

    The fields with a flag are ``spiritlm eval zeroshot``'s (:func:`spiritlm.cli.flags_from`): one declaration.
    """

    seed: int = 0
    max_items: PositiveInt | None = None
    batch_size: PositiveInt = 16
    split: str = "test"
    tasks: Sequence[str] = TASKS
    num_pairs: PositiveInt | None = None


def run_zeroshot(model: EvalModel, inputs: ZeroshotInputs, config: ZeroshotConfig | None = None,
                 out_dir: str | os.PathLike | None = None, *, progress: bool = True) -> EvalResult:
    """Scores every group of every task and modality; with ``out_dir``, writes ``metrics.json`` / ``predictions.jsonl`` there.

    Args:
        model: from :func:`~spiritlm.evals.common.load_eval_model` (a speech tokenizer for WAVs
            without units).
        inputs: the sets folder, or the manifest to generate sets from (into ``out_dir/sets``).
        config: the settings (default :class:`ZeroshotConfig`).
        out_dir: output folder (None: only return the result; generated sets need one).
        progress: tqdm bars.
    """
    cfg = config or ZeroshotConfig()
    manifest, sets = inputs.manifest, inputs.sets
    seed, max_items, batch_size, split, tasks = cfg.seed, cfg.max_items, cfg.batch_size, cfg.split, cfg.tasks
    bad = [t for t in tasks if t not in TASKS]
    if bad or not tasks:
        raise UserError(f"unknown task(s) {', '.join(bad) or '(none)'}; choose from {', '.join(TASKS)} (--tasks)")
    generated = sets is None
    if sets is None:
        if manifest is None:
            raise UserError("zeroshot needs --sets DIR (public layouts) or --manifest M (to generate sets)")
        if out_dir is None:
            raise UserError("zeroshot generates its sets into OUT/sets: give an output folder (--out)")
        sets = _synthetic_sets(Path(out_dir) / "sets", manifest, split, seed, cfg.num_pairs or max_items or 100)
    by_task = read_sets(sets, tasks)
    metrics: dict = {}
    predictions: list[dict] = []
    notes: dict[str, str] = {}
    thr = Throughput()
    for task in tasks:
        cands_all = by_task.get(task, [])
        for modality in ("spoken", "written"):
            cands = [c for c in cands_all if c.modality == modality]
            if not cands:
                continue
            groups = sorted({c.group for c in cands})
            if max_items is not None and len(groups) > max_items:
                keep = set(random.Random(f"{seed}:{task}:{modality}").sample(groups, max_items))
                cands = [c for c in cands if c.group in keep]
            name = f"{task}_{modality}"
            scored = _score_set(model, task, modality, cands, seed=seed, batch_size=batch_size, progress=progress, thr=thr)
            if isinstance(scored, str):
                notes[name] = scored
                continue
            metrics[name], rows = scored
            predictions += rows
    if not any(isinstance(v, dict) and "value" in v for v in metrics.values()):
        raise UserError(f"{sets}: nothing could be scored ({'; '.join(f'{k}: {v}' for k, v in notes.items()) or 'no items'})")
    metrics["notes"] = notes
    metrics["config"] = {"model": model.name, "sets": str(sets), "generated": generated,
                         "manifest": None if manifest is None else str(manifest), "seed": seed, "max_items": max_items,
                         "tasks": list(tasks), "score": "sum of natural-log token probabilities"}
    result = EvalResult("zeroshot", metrics, predictions, thr.as_dict())
    if out_dir is not None:
        write_eval_outputs(out_dir, result)
    return result
