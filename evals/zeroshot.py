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

Without ``--sets`` the task generates such a folder from the corpus (:func:`make_synthetic_sets`)
and reads it with the same readers.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
import shutil
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spiritlm.errors import UserError
from spiritlm.evals.common import (
    EvalModel,
    EvalResult,
    bootstrap_ci,
    load_manifest_items,
    load_units,
    metric,
    speech_string,
    units_of,
    write_eval_outputs,
)
from spiritlm.evals.engine import Throughput

__all__ = [
    "Candidate",
    "make_synthetic_sets",
    "perturb_word",
    "read_storycloze_spoken",
    "read_sets",
    "read_storycloze_written",
    "read_zerospeech_set",
    "run_zeroshot",
    "violate_sentence",
]

TASKS = ("lexical", "syntactic", "storycloze")
LEXICAL_COLUMNS = ("id", "filename", "voice", "frequency", "word", "correct")
SYNTACTIC_COLUMNS = ("id", "filename", "type", "subtype", "correct")
STORYCLOZE_COLUMNS = ("InputStoryid", "InputSentence1", "RandomFifthSentenceQuiz1", "RandomFifthSentenceQuiz2",
                      "AnswerRightEnding")


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
# Synthetic sets from the corpus
# ---------------------------------------------------------------------------------------------

_VOWELS = "aeiou"
_CONSONANT_CLASSES = ("pbtdkg", "fvsz", "mn", "lr", "wy", "hj")  # swap within a class: the shape stays pronounceable


def perturb_word(word: str, rng: random.Random, lexicon: set[str], tries: int = 50) -> str | None:
    """A pseudo-word: ``word`` with one letter replaced by a phonotactically similar one.

    A vowel becomes another vowel, a consonant another consonant of the same class (stops,
    fricatives, nasals, liquids, glides), so the result keeps the word's syllable shape and reads
    as a possible English word; it must not be in ``lexicon``. None when no try succeeds.
    """
    letters = list(word)
    positions = [i for i, c in enumerate(letters) if c in _VOWELS or any(c in k for k in _CONSONANT_CLASSES)]
    for _ in range(tries):
        if not positions:
            return None
        i = rng.choice(positions)
        c = letters[i]
        pool = _VOWELS if c in _VOWELS else next(k for k in _CONSONANT_CLASSES if c in k)
        options = [x for x in pool if x != c]
        if not options:
            continue
        new = "".join(letters[:i] + [rng.choice(options)] + letters[i + 1:])
        if new not in lexicon and new != word:
            return new
    return None


_BE_SWAP = {"is": "are", "are": "is", "was": "were", "were": "was", "has": "have", "have": "has"}
_DETERMINERS = ("the", "a", "an", "my", "his", "her", "our", "their", "some", "this")


def violate_sentence(words: Sequence[str], rng: random.Random, verbs: dict[str, str]) -> tuple[list[str], str] | None:
    """An ungrammatical twin of a sentence: ``(words, subtype)`` or None when no rule applies.

    Rules (one is applied): ``agreement_be`` (is↔are, was↔were, has↔have), ``agreement_verb``
    (a present verb's number: ``walks``↔``walk``, from ``verbs`` = {form: other form}),
    ``word_order`` (a determiner swapped with the next word: ``the cat`` → ``cat the``).
    """
    words = list(words)
    options = []
    for i, w in enumerate(words):
        if w in _BE_SWAP:
            options.append(("agreement_be", i))
        elif w in verbs and i > 0:
            options.append(("agreement_verb", i))
        if w in _DETERMINERS and i + 1 < len(words) and words[i + 1] not in _DETERMINERS:
            options.append(("word_order", i))
    if not options:
        return None
    kinds = sorted({k for k, _ in options})
    kind = rng.choice(kinds)
    i = rng.choice([j for k, j in options if k == kind])
    bad = list(words)
    if kind == "agreement_be":
        bad[i] = _BE_SWAP[bad[i]]
    elif kind == "agreement_verb":
        bad[i] = verbs[bad[i]]
    else:
        bad[i], bad[i + 1] = bad[i + 1], bad[i]
    return bad, kind


def _verb_forms() -> dict[str, str]:
    from spiritlm.corpus import lexicon as L

    forms: dict[str, str] = {}
    for name in dir(L):
        if name.startswith(("VERBS_", "INTRANSITIVE")):
            for pair in getattr(L, name):
                if isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(x, str) for x in pair):
                    base = pair[0]
                    third = L.third_person(base)
                    if base != third and " " not in base:
                        forms[base], forms[third] = third, base
    return forms


def _voices(n: int):
    from spiritlm.corpus.espeak import Voice
    from spiritlm.corpus.synth import SPEAKERS

    return [(s.name, Voice(name=f"{s.language}+{s.variant}", rate=min(max(round(175 * s.rate_factor), 80), 450),
                           pitch=min(max(50 + s.pitch_offset, 0), 100))) for s in SPEAKERS[:n]]


def _render(jobs: list[tuple[str, list[list[str]], object]], folder: Path, seed: int) -> None:
    """Renders ``(stem, sentences, voice)`` jobs to ``folder/<stem>.wav`` (16 kHz PCM16), one fork per voice."""
    from math import gcd

    import soundfile as sf
    from scipy.signal import resample_poly

    from spiritlm.corpus.espeak import get_engine

    engine = get_engine()
    sr_in, sr_out = engine.sample_rate, 16000
    g = gcd(sr_in, sr_out)
    by_voice: dict[object, list[tuple[str, list[list[str]]]]] = defaultdict(list)
    for stem, sentences, voice in jobs:
        by_voice[voice].append((stem, sentences))
    for voice, items in by_voice.items():
        flat = [(s, ".") for _, sentences in items for s in sentences]
        synths = engine.synthesize_many(flat, voice, rand_seed=seed)  # type: ignore[arg-type]
        k = 0
        gap = np.zeros(int(0.25 * sr_in), dtype=np.int16)
        for stem, sentences in items:
            parts = [gap]
            for _ in sentences:
                parts += [synths[k].samples, gap]
                k += 1
            audio = resample_poly(np.concatenate(parts).astype(np.float64) / 32768.0, sr_out // g, sr_in // g)
            pcm = np.clip(np.round(audio * 32767.0), -32768, 32767).astype(np.int16)
            sf.write(folder / f"{stem}.wav", pcm, sr_out, subtype="PCM_16", format="WAV")


def make_synthetic_sets(
    out: str | os.PathLike,
    manifest: str | os.PathLike,
    *,
    split: str = "test",
    seed: int = 0,
    num_pairs: int = 100,
    num_voices: int = 4,
) -> Path:
    """Writes lexical, syntactic and story-ending sets made from the corpus, in the public layouts.

    * lexical: words of the ``split`` transcripts (4+ letters) and a pseudo-word for each
      (:func:`perturb_word`, never a word of the corpus vocabulary), both spoken by one voice;
    * syntactic: sentences of the corpus's narrative grammar (``text_sources``, seeded apart from
      the corpus) and an ungrammatical twin (:func:`violate_sentence`); ``gold.csv`` adds ``voice``
      and ``text`` columns so the written variant can be scored too;
    * storycloze: a review sentence of clear sentiment (the corpus's sentiment templates), ended
      by a sentence of the same sentiment (correct) or of the opposite one (incorrect).

    Audio is rendered with espeak-ng (:mod:`spiritlm.corpus.espeak`) by the corpus's speakers at
    16 kHz. ``out`` gets ``lexical/dev``, ``syntactic/dev``, ``storycloze/{spoken,written.csv}``
    and ``synthetic.json`` (the parameters); it is built in a temporary folder and renamed.

    Returns:
        ``out``.
    """
    from spiritlm.corpus import text_sources as T

    out = Path(out)
    items = load_manifest_items(manifest)
    vocab = {w for it in items for w in it["text"].split()} | T.vocabulary()
    split_words = sorted({w for it in items if it.get("split") == split for w in it["text"].split()
                          if len(w) >= 4 and w.isalpha()})
    if not split_words:
        raise UserError(f"{manifest}: no {split!r} transcript has words of 4+ letters (--manifest/--split)")
    freq = Counter(w for it in items for w in it["text"].split())
    voices = _voices(num_voices)
    rng = random.Random(f"{seed}:zeroshot-sets")
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    lex, syn, spoken_sc = tmp / "lexical" / "dev", tmp / "syntactic" / "dev", tmp / "storycloze" / "spoken"
    for d in (lex, syn, spoken_sc):
        d.mkdir(parents=True)

    # lexical
    jobs, rows = [], []
    words = rng.sample(split_words, min(num_pairs, len(split_words)))
    for i, word in enumerate(words):
        fake = perturb_word(word, rng, vocab)
        if fake is None:
            continue
        vname, voice = voices[i % len(voices)]
        for form, correct in ((word, 1), (fake, 0)):
            stem = f"lex{i:05d}_{'w' if correct else 'n'}"
            jobs.append((stem, [[form]], voice))
            rows.append({"id": i, "filename": stem, "voice": vname, "frequency": freq.get(word, 0), "word": form,
                         "correct": correct})
    _render(jobs, lex, seed)
    _write_csv(lex / "gold.csv", LEXICAL_COLUMNS, rows)

    # syntactic
    verbs = _verb_forms()
    jobs, rows, i, draws = [], [], 0, 0
    while i < num_pairs and draws < num_pairs * 20:
        draws += 1
        sent = list(T.narrative_item(rng, max_sentences=1).sentences[0][0])
        made = violate_sentence(sent, rng, verbs)
        if made is None:
            continue
        bad, subtype = made
        vname, voice = voices[i % len(voices)]
        for form, correct in ((sent, 1), (bad, 0)):
            stem = f"syn{i:05d}_{'g' if correct else 'u'}"
            jobs.append((stem, [form], voice))
            rows.append({"id": i, "filename": stem, "type": "agreement" if subtype.startswith("agreement") else "word_order", "subtype": subtype,
                         "correct": correct, "voice": vname, "text": " ".join(form)})
        i += 1
    _render(jobs, syn, seed)
    _write_csv(syn / "gold.csv", SYNTACTIC_COLUMNS + ("voice", "text"), rows)

    # story endings: sentiment-consistent vs inconsistent
    endings: dict[str, set[tuple[str, ...]]] = {"positive": set(), "negative": set()}
    contexts: list[tuple[str, tuple[str, ...]]] = []
    draws = 0
    while (len(contexts) < num_pairs or not all(endings.values())) and draws < num_pairs * 200:
        draws += 1
        label = rng.choice(("positive", "negative"))
        item = T.sentiment_item(rng, label)
        if len(item.sentences) == 2:
            endings[label].add(item.sentences[1][0])
        elif len(contexts) < num_pairs:
            contexts.append((label, item.sentences[0][0]))
    written = []
    jobs = []
    if all(endings.values()):
        ends = {k: sorted(v) for k, v in endings.items()}
        for i, (label, ctx) in enumerate(contexts):
            other = "negative" if label == "positive" else "positive"
            good, bad = rng.choice(ends[label]), rng.choice(ends[other])
            vname, voice = voices[i % len(voices)]
            jobs.append((f"sc{i:05d}_correct", [list(ctx), list(good)], voice))
            jobs.append((f"sc{i:05d}_incorrect", [list(ctx), list(bad)], voice))
            first = rng.random() < 0.5
            written.append({"InputStoryid": f"sc{i:05d}", "InputSentence1": " ".join(ctx), "InputSentence2": "",
                            "InputSentence3": "", "InputSentence4": "",
                            "RandomFifthSentenceQuiz1": " ".join(good if first else bad),
                            "RandomFifthSentenceQuiz2": " ".join(bad if first else good),
                            "AnswerRightEnding": 1 if first else 2})
    _render(jobs, spoken_sc, seed)
    _write_csv(tmp / "storycloze" / "written.csv",
               ("InputStoryid", "InputSentence1", "InputSentence2", "InputSentence3", "InputSentence4",
                "RandomFifthSentenceQuiz1", "RandomFifthSentenceQuiz2", "AnswerRightEnding"), written)
    params = {"manifest": str(manifest), "split": split, "seed": seed, "num_pairs": num_pairs, "num_voices": num_voices}
    (tmp / "synthetic.json").write_text(json.dumps(params, indent=2) + "\n")
    from spiritlm.atomic import publish_dir

    return publish_dir(tmp, out)


def _write_csv(path: Path, columns: Sequence[str], rows: Sequence[dict]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow(r)


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


def run_zeroshot(
    model: EvalModel,
    out_dir: str | os.PathLike,
    *,
    manifest: str | os.PathLike | None = None,
    sets: str | os.PathLike | None = None,
    seed: int = 0,
    max_items: int | None = None,
    batch_size: int = 16,
    split: str = "test",
    tasks: Sequence[str] = TASKS,
    num_pairs: int | None = None,
    progress: bool = True,
) -> EvalResult:
    """Scores every group of every task and modality; writes ``metrics.json`` / ``predictions.jsonl``.

    Args:
        model: from :func:`~spiritlm.evals.common.load_eval_model` (a speech tokenizer for WAVs
            without units).
        out_dir: output folder; generated sets go to ``out_dir/sets``.
        manifest: the corpus manifest for :func:`make_synthetic_sets` (when ``sets`` is None).
        sets: a folder in the public layouts (module docstring).
        seed: seeds the synthetic sets and the group sample.
        max_items: at most this many groups per task and modality (seeded sample).
        batch_size: sequences per forward pass.
        split: manifest split whose words seed the lexical set.
        tasks: subset of ``lexical``, ``syntactic``, ``storycloze``.
        num_pairs: size of each generated set (default ``max_items`` or 100).
        progress: tqdm bars.
    """
    bad = [t for t in tasks if t not in TASKS]
    if bad or not tasks:
        raise UserError(f"unknown task(s) {', '.join(bad) or '(none)'}; choose from {', '.join(TASKS)} (--tasks)")
    out_dir = Path(out_dir)
    generated = sets is None
    if sets is None:
        if manifest is None:
            raise UserError("zeroshot needs --sets DIR (public layouts) or --manifest M (to generate sets)")
        n = num_pairs or max_items or 100
        sets_dir = out_dir / "sets"
        params = {"manifest": str(manifest), "split": split, "seed": seed, "num_pairs": n, "num_voices": 4}
        marker = sets_dir / "synthetic.json"
        if not (marker.is_file() and json.loads(marker.read_text()) == params):
            out_dir.mkdir(parents=True, exist_ok=True)
            make_synthetic_sets(sets_dir, manifest, split=split, seed=seed, num_pairs=n)
        sets = sets_dir
    by_task = read_sets(sets, tasks)
    lm = model.lm
    tok = lm.tokenizer
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
            if modality == "spoken":
                strings, problem = _speech_strings(cands, model)
                if problem:
                    notes[name] = f"skipped: {problem}"
                    continue
                prompt = [tok.bos_id, tok.speech_marker_id]
                conts = [tok.encode(strings[c.audio]) for c in cands]  # type: ignore[index]
            else:
                prompt = [tok.bos_id, tok.text_marker_id]
                conts = [tok.encode(c.text) for c in cands]  # type: ignore[arg-type]
            room = lm.config.max_seq_len - len(prompt)
            fits = [len(x) <= room for x in conts]
            too_long = {c.group for c, ok in zip(cands, fits) if not ok}
            keep_idx = [i for i, c in enumerate(cands) if c.group not in too_long]
            cands = [cands[i] for i in keep_idx]
            conts = [conts[i] for i in keep_idx]
            if not cands:
                notes[name] = "skipped: every item is longer than max_seq_len"
                continue
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
            metrics[name] = metric(float(np.mean(credit)), bootstrap_ci(credit, seed=seed), chance, len(results), **extra)
            for r in results:
                predictions.append({
                    "id": f"{name}/{r['group']}", "task": task, "modality": modality, "shot_ids": [], "seed": seed,
                    "reference": r["reference"], "output": r["output"], "correct": r["credit"],
                    "score": {c.key: round(float(s), 4) for c, s in r["members"]},
                })
    if not any(isinstance(v, dict) and "value" in v for v in metrics.values()):
        raise UserError(f"{sets}: nothing could be scored ({'; '.join(f'{k}: {v}' for k, v in notes.items()) or 'no items'})")
    metrics["notes"] = notes
    metrics["config"] = {"model": model.name, "sets": str(sets), "generated": generated,
                         "manifest": None if manifest is None else str(manifest), "seed": seed, "max_items": max_items,
                         "tasks": list(tasks), "score": "sum of natural-log token probabilities"}
    result = EvalResult("zeroshot", metrics, predictions, thr.as_dict())
    write_eval_outputs(out_dir, result)
    return result
