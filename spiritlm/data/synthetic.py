"""Synthetic stand-ins for pipeline inputs, for tests, benchmarks and the no-corpus fallbacks.

Random data (nothing learnable, the right shapes and lengths):

* :func:`random_manifest`: a manifest of random words with random word times (no audio);
* :func:`random_units` / :func:`unit_dict`: units JSONL with run-structured random HuBERT (25 Hz),
  pitch (12.5 Hz) and style (1 Hz) streams of the lengths each utterance's duration implies.

Toy data (learnable: the speech side is predictable from the text):

* :func:`toy_sentences` / :func:`toy_tokenizer`: template sentences and a
  SpiritTextTokenizer trained on them (speech pieces after the text pieces, as for LLaMA-2);
* :func:`toy_utterances`: aligned utterances whose HuBERT units spell their words (each character
  a unit held 1-3 frames, a silence unit between words);
* :func:`toy_token_dir` / :func:`toy_token_dirs`: token directories made from them with
  spiritlm.interleave and spiritlm.data.write_token_dir, in the layout of ``spiritlm data build``.

Everything is seeded and builds in seconds on a CPU; nothing is downloaded.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from spiritlm.constants import SAMPLE_RATE, STREAM_RATES, UNIT_HOP

_LEXICON = (
    "the a an cat dog bird sat ran flew on under over mat table tree quickly slowly happy sad house river "
    "bright dark little big old new green blue song voice morning evening walked talked sang near far always "
    "never today tomorrow city road window door light rain sun friend mother father child people world"
).split()


def _stream(rng: random.Random, n: int, vocab: int, max_run: int) -> str:
    out: list[int] = []
    while len(out) < n:
        out += [rng.randrange(vocab)] * rng.randint(1, max_run)
    return " ".join(map(str, out[:n]))


def unit_dict(duration: float, rng: random.Random, sample_rate: int = SAMPLE_RATE) -> dict[str, str]:
    """Random HuBERT (25 Hz, hop 640), pitch (12.5 Hz) and style (1 Hz) streams for ``duration`` s."""
    n_samples = int(round(duration * sample_rate))
    return {
        "hubert": _stream(rng, n_samples * SAMPLE_RATE // sample_rate // UNIT_HOP, 501, 4),
        "pitch": _stream(rng, int(duration * STREAM_RATES["pitch"]), 64, 6),
        "style": _stream(rng, math.ceil(duration), 100, 3),
    }


def random_units(utterances: Iterable, out: str | os.PathLike, seed: int = 0) -> Path:
    """Writes a units JSONL (``id``, ``audio``, ``hubert``, ``pitch``, ``style``) for manifest
    utterances (objects with ``id``, ``audio``, ``duration``, ``sample_rate``)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as f:
        for utt in utterances:
            rng = random.Random(f"{seed}:{utt.id}")
            rec = {"id": utt.id, "audio": str(utt.audio)}
            rec.update(unit_dict(float(utt.duration), rng, int(getattr(utt, "sample_rate", SAMPLE_RATE) or SAMPLE_RATE)))
            f.write(json.dumps(rec) + "\n")
    return out


def random_manifest(
    out: str | os.PathLike, num_utts: int, seed: int = 0, min_words: int = 8, max_words: int = 60
) -> Path:
    """Writes a manifest JSONL of ``num_utts`` utterances of random words and word times
    (audio paths point nowhere)."""
    rng = random.Random(seed)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as f:
        for k in range(num_utts):
            t = rng.uniform(0.05, 0.4)
            words = []
            for _ in range(rng.randint(min_words, max_words)):
                d = rng.uniform(0.15, 0.5)
                words.append({"word": rng.choice(_LEXICON), "start": round(t, 3), "end": round(t + d, 3)})
                t += d + rng.choice((0.0, 0.0, 0.05, 0.2))
            uid = f"rnd{k:06d}"
            rec = {
                "id": uid,
                "audio": f"audio/{uid}.wav",
                "sample_rate": SAMPLE_RATE,
                "duration": round(t + rng.uniform(0.1, 0.4), 3),
                "speaker": f"spk{k % 8}",
                "style": "default",
                "text": " ".join(w["word"] for w in words),
                "words": words,
                "split": "train",
            }
            f.write(json.dumps(rec) + "\n")
    return out


# ---- toy data -----------------------------------------------------------------------------

_SUBJECTS = ["the cat", "a dog", "my friend", "the old man", "her sister", "the teacher", "a bird", "our neighbour"]
_VERBS = ["saw", "liked", "found", "painted", "carried", "visited", "followed", "remembered"]
_OBJECTS = ["a red ball", "the green house", "a small boat", "the river", "an apple", "the big tree", "a letter", "the market"]
_TAILS = ["in the morning", "after dinner", "near the park", "with great care", "on sunday", "before the rain"]


def toy_sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` template sentences (subject verb object tail), seeded."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        parts = [rng.choice(_SUBJECTS), rng.choice(_VERBS), rng.choice(_OBJECTS)]
        if rng.random() < 0.7:
            parts.append(rng.choice(_TAILS))
        s = " ".join(parts)
        if rng.random() < 0.5:  # a second clause makes utterances long enough to interleave
            s += " and " + " ".join([rng.choice(_SUBJECTS), rng.choice(_VERBS), rng.choice(_OBJECTS)])
        out.append(s)
    return out


def toy_tokenizer(
    directory: str | Path | None = None, *, vocab_size: int = 300, num_hubert: int = 64, seed: int = 0, pad_to_multiple: int = 64
):
    """A SpiritTextTokenizer trained on toy sentences (saved as ``directory/tokenizer.model``)."""
    from spiritlm.text_tokenizer import SpiritTextTokenizer

    tok = SpiritTextTokenizer.train(
        toy_sentences(3000, seed), vocab_size=vocab_size, num_hubert=num_hubert, pad_to_multiple=pad_to_multiple
    )
    if directory is not None:
        path = Path(directory) / "tokenizer.model"
        tok.save(path)
        tok = SpiritTextTokenizer.load(path)
    return tok


@dataclass
class _Word:
    word: str
    start: float
    end: float


@dataclass
class _Utt:
    id: str
    duration: float
    text: str
    words: list = field(default_factory=list)
    split: str = "train"


def _char_unit(c: str, num_hubert: int) -> int:
    return 1 + (ord(c) * 7) % (num_hubert - 1)  # unit 0 is silence


def toy_utterances(n: int, *, num_hubert: int = 64, seed: int = 0, prefix: str = "utt") -> tuple[list[_Utt], dict[str, dict]]:
    """``n`` utterances with word alignments and their unit dicts (``{"hubert": "…"}`` at 25 Hz).

    Returns ``(utterances, units_by_id)``; units follow Meta's format (not deduplicated).
    """
    rng = random.Random(seed)
    utts, units = [], {}
    for i, text in enumerate(toy_sentences(n, seed)):
        frames: list[int] = [0] * rng.randint(1, 3)
        words = []
        for w in text.split():
            start = len(frames) / STREAM_RATES["hubert"]
            for c in w:
                frames += [_char_unit(c, num_hubert)] * rng.randint(1, 3)
            words.append(_Word(w, start, len(frames) / STREAM_RATES["hubert"]))
            frames += [0] * rng.randint(1, 2)
        uid = f"{prefix}{i:05d}"
        utts.append(_Utt(uid, len(frames) / STREAM_RATES["hubert"], text, words))
        units[uid] = {"audio": f"{uid}.wav", "hubert": " ".join(map(str, frames))}
    return utts, units


def toy_token_dir(
    out: str | Path, tokenizer, *, num_utterances: int = 300, seed: int = 0, prefix: str = "utt",
    text_span: tuple[int, int] = (3, 6), speech_span: tuple[int, int] = (2, 4),
) -> Path:
    """Writes a token directory (speech/text/interleaved) of toy utterances; returns ``out``."""
    from spiritlm.data import write_token_dir
    from spiritlm.interleave import InterleaveConfig, SUBSETS, make_documents

    num_hubert = tokenizer.num_units["hubert"]
    utts, units = toy_utterances(num_utterances, num_hubert=num_hubert, seed=seed, prefix=prefix)
    cfg = InterleaveConfig(
        text_span_min=text_span[0], text_span_max=text_span[1], speech_span_min=speech_span[0], speech_span_max=speech_span[1]
    )
    docs: dict[str, list[list[int]]] = {s: [] for s in SUBSETS}
    for utt in utts:
        made, _ = make_documents(utt, units[utt.id], cfg, seed=seed)
        for doc in made:
            docs[doc.subset].append(tokenizer.encode(doc.text))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok_path = out / "tokenizer.model"
    tokenizer.save(tok_path)
    write_token_dir(
        out, docs, vocab_size=tokenizer.vocab_size, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id,
        pad_id=tokenizer.pad_id, tokenizer=str(tok_path),
    )
    return out


def toy_token_dirs(root: str | Path, *, num_train: int = 300, num_val: int = 40, num_hubert: int = 64, seed: int = 0):
    """Tokenizer + ``root/train`` and ``root/valid`` token directories; returns ``(tokenizer, train, valid)``."""
    root = Path(root)
    tok = toy_tokenizer(root, num_hubert=num_hubert, seed=seed)
    train = toy_token_dir(root / "train", tok, num_utterances=num_train, seed=seed, prefix="tr")
    valid = toy_token_dir(root / "valid", tok, num_utterances=num_val, seed=seed + 1, prefix="va")
    return tok, train, valid
