"""Random stand-ins for pipeline inputs, for tests and benchmarks of the data pipeline.

:func:`random_units` writes a units JSONL with random (but run-structured, like real HuBERT
units) streams of the lengths each utterance's duration implies; :func:`random_manifest` writes a
manifest of random words with random word times. Neither touches audio.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Iterable
from pathlib import Path

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


def unit_dict(duration: float, rng: random.Random, sample_rate: int = 16000) -> dict[str, str]:
    """Random HuBERT (25 Hz, hop 640), pitch (12.5 Hz) and style (1 Hz) streams for ``duration`` s."""
    n_samples = int(round(duration * sample_rate))
    return {
        "hubert": _stream(rng, n_samples * 16000 // sample_rate // 640, 501, 4),
        "pitch": _stream(rng, int(duration * 12.5), 64, 6),
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
            rec.update(unit_dict(float(utt.duration), rng, int(getattr(utt, "sample_rate", 16000) or 16000)))
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
                "sample_rate": 16000,
                "duration": round(t + rng.uniform(0.1, 0.4), 3),
                "speaker": f"spk{k % 8}",
                "style": "default",
                "text": " ".join(w["word"] for w in words),
                "words": words,
                "split": "train",
            }
            f.write(json.dumps(rec) + "\n")
    return out
