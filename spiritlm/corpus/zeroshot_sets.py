"""Zero-shot likelihood sets made from the corpus, in the public layouts the zero-shot task reads.

:func:`make_synthetic_sets` writes lexical (sWUGGY-style: a word and a pseudo-word), syntactic
(sBLIMP-style: a sentence and an ungrammatical twin) and story-ending (StoryCloze-style) pairs,
spoken by the corpus's espeak voices, in the ZeroSpeech 2021 / StoryCloze layouts that
:mod:`spiritlm.evals.zeroshot` reads (its docstring describes them; ``--sets`` reads the public
sets the same way). Making the sets is corpus work: text of the corpus's grammars, audio of its
speakers; scoring a model on them is the evaluation's.
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from spiritlm.constants import SAMPLE_RATE
from spiritlm.errors import UserError

LEXICAL_COLUMNS = ("id", "filename", "voice", "frequency", "word", "correct")
SYNTACTIC_COLUMNS = ("id", "filename", "type", "subtype", "correct")
STORYCLOZE_COLUMNS = ("InputStoryid", "InputSentence1", "RandomFifthSentenceQuiz1", "RandomFifthSentenceQuiz2",
                      "AnswerRightEnding")

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
    from spiritlm.audio import resample, to_pcm16, write_audio
    from spiritlm.corpus.espeak import get_engine

    engine = get_engine()
    sr_in, sr_out = engine.sample_rate, SAMPLE_RATE
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
            audio = resample(np.concatenate(parts).astype(np.float64) / 32768.0, sr_in, sr_out, dtype=None)
            write_audio(folder / f"{stem}.wav", to_pcm16(audio), sr_out, subtype="PCM_16", format="WAV")


def _lexical_pairs(rng: random.Random, split_words: Sequence[str], vocab: set[str], freq: Counter, voices: list,
                   num_pairs: int) -> tuple[list, list[dict]]:
    """Render jobs and ``gold.csv`` rows of word / pseudo-word pairs (:func:`perturb_word`)."""
    jobs, rows = [], []
    words = rng.sample(list(split_words), min(num_pairs, len(split_words)))
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
    return jobs, rows


def _syntactic_pairs(rng: random.Random, voices: list, num_pairs: int) -> tuple[list, list[dict]]:
    """Render jobs and ``gold.csv`` rows of narrative-grammar sentences and their ungrammatical twins."""
    from spiritlm.corpus import text_sources as T

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
    return jobs, rows


def _story_pairs(rng: random.Random, voices: list, num_pairs: int) -> tuple[list, list[dict]]:
    """Render jobs and StoryCloze rows: a review sentence ended in its own sentiment or the opposite one."""
    from spiritlm.corpus import text_sources as T

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
    written, jobs = [], []
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
    return jobs, written


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

    from spiritlm.corpus.manifest import ManifestError, read_manifest

    out = Path(out)
    try:
        utts = read_manifest(manifest)
    except ManifestError as e:
        raise UserError(f"{e} (--manifest)") from None
    vocab = {w for u in utts for w in u.text.split()} | T.vocabulary()
    split_words = sorted({w for u in utts if u.split == split for w in u.text.split() if len(w) >= 4 and w.isalpha()})
    if not split_words:
        raise UserError(f"{manifest}: no {split!r} transcript has words of 4+ letters (--manifest/--split)")
    freq = Counter(w for u in utts for w in u.text.split())
    voices = _voices(num_voices)
    rng = random.Random(f"{seed}:zeroshot-sets")
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    lex, syn, spoken_sc = tmp / "lexical" / "dev", tmp / "syntactic" / "dev", tmp / "storycloze" / "spoken"
    for d in (lex, syn, spoken_sc):
        d.mkdir(parents=True)

    # the three sets draw from one generator, in this order
    jobs, rows = _lexical_pairs(rng, split_words, vocab, freq, voices, num_pairs)
    _render(jobs, lex, seed)
    _write_csv(lex / "gold.csv", LEXICAL_COLUMNS, rows)
    jobs, rows = _syntactic_pairs(rng, voices, num_pairs)
    _render(jobs, syn, seed)
    _write_csv(syn / "gold.csv", SYNTACTIC_COLUMNS + ("voice", "text"), rows)
    jobs, written = _story_pairs(rng, voices, num_pairs)
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
