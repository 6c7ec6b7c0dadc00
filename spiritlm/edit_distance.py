"""Edit-distance error rates (WER, CER, unit edit rate): the one wrapper around jiwer.

Every stage that scores a hypothesis against a reference — the evals' ASR and TTS, the ASR
judge, the vocoder's re-tokenization check, the aligner — counts errors here, so they share one
rule for the corner cases:

* errors are substitutions + deletions + insertions of jiwer's alignment;
* a corpus rate is pooled: all errors over all reference tokens (not a mean of per-item rates);
* an empty reference contributes its hypothesis' tokens as insertions and nothing to the
  denominator; a corpus whose references are all empty has no rate (NaN).

>>> error_rate(["the cat sat"], ["the cat sat down"], unit="word")
0.3333333333333333
>>> edit_counts([3, 3, 7], [3, 7], unit="token")
(1, 3)
>>> error_rate(["", "ab"], ["x", "ab"], unit="char")  # the empty reference adds one insertion
0.5
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

Unit = Literal["word", "char", "token"]


def _as_words(seq: str | Sequence, unit: Unit) -> list[str]:
    if unit == "word":
        return str(seq).split()
    if unit == "char":
        return list(str(seq))
    if unit == "token":
        return [f"t{tok}" for tok in seq]  # any hashable token -> one jiwer "word"
    raise ValueError(f"unit must be 'word', 'char' or 'token', got {unit!r}")


def edit_counts(ref: str | Sequence, hyp: str | Sequence, unit: Unit = "word") -> tuple[int, int]:
    """``(errors, reference length)`` of one item.

    ``unit``: ``"word"`` (whitespace-separated words of a string), ``"char"`` (characters of a
    string, spaces included, as jiwer's CER) or ``"token"`` (the items of a sequence, e.g. unit ids).
    """
    import jiwer

    r, h = _as_words(ref, unit), _as_words(hyp, unit)
    if not r:
        return len(h), 0
    if not h:
        return len(r), len(r)
    # every token is one jiwer word, so characters and units go through the same alignment
    out = jiwer.process_words(" ".join(w.replace(" ", "\u2581") for w in r), " ".join(w.replace(" ", "\u2581") for w in h))
    return out.substitutions + out.deletions + out.insertions, len(r)


def error_rate(refs: Sequence, hyps: Sequence, unit: Unit = "word") -> float:
    """Pooled error rate of a corpus: all errors / all reference tokens (NaN when there are none).

    Raises:
        ValueError: ``refs`` and ``hyps`` differ in length.
    """
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    counts = [edit_counts(r, h, unit) for r, h in zip(refs, hyps)]
    total = sum(n for _, n in counts)
    return sum(e for e, _ in counts) / total if total else float("nan")
