"""Evaluation-side helpers over the batched engine of :class:`spiritlm.generation.SpiritLM`.

The engine itself (``generate_batch_ids``, ``score_continuations``, ``generate_batch``, all on
the one decoder) lives on ``SpiritLM``; this module holds what the tasks build with it:

* :func:`fit_shots`: how many few-shot examples fit in the model's context;
* :func:`text_stop_ids`: ids that end a text answer (markers, newline pieces);
* :func:`answer_budget`: a generated answer's token budget from its reference's length;
* :func:`clean_answer`: generated ids → the answer text (cut at the first stop id);
* :func:`allowed_with`, :func:`generate_by_budget`: an answer's vocabulary mask; one decoding call per budget;
* :func:`choose_by_likelihood`: pick one of several candidate continuations per prompt;
* :class:`Throughput`: tokens/s accumulated over the engine calls of a task.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Throughput", "allowed_with", "answer_budget", "choose_by_likelihood", "clean_answer", "fit_shots", "generate_by_budget",
           "text_stop_ids"]


@dataclass
class Throughput:
    """Sums the :class:`~spiritlm.generation.DecodeStats` (``SpiritLM.last_stats``) of a task's
    engine calls: generated (or scored) tokens and seconds."""

    generated_tokens: int = 0
    generation_seconds: float = 0.0
    scored_tokens: int = 0
    scoring_seconds: float = 0.0
    calls: list[dict] = field(default_factory=list)

    def add(self, stats: Any | None) -> None:
        """Adds one call's ``DecodeStats`` (None: nothing ran)."""
        if stats is None:
            return
        if stats.kind == "generate":
            self.generated_tokens += int(stats.new_tokens)
            self.generation_seconds += float(stats.seconds)
        else:
            self.scored_tokens += int(stats.tokens)
            self.scoring_seconds += float(stats.seconds)

    def as_dict(self) -> dict[str, Any]:
        gen = self.generated_tokens / self.generation_seconds if self.generation_seconds > 0 else None
        sco = self.scored_tokens / self.scoring_seconds if self.scoring_seconds > 0 else None
        out: dict[str, Any] = {
            "generated_tokens": self.generated_tokens, "generation_seconds": round(self.generation_seconds, 3),
            "generated_tokens_per_s": gen, "scored_tokens": self.scored_tokens,
            "scoring_seconds": round(self.scoring_seconds, 3), "scored_tokens_per_s": sco,
        }
        out["tokens_per_s"] = gen if gen is not None else sco
        return out


def fit_shots(shot_lengths: Sequence[int], fixed_length: int, max_seq_len: int, reserve: int) -> int:
    """How many of the shots (in order) fit: ``fixed_length + sum(shots[:k]) + reserve <= max_seq_len``.

    Args:
        shot_lengths: token count of each rendered shot.
        fixed_length: tokens of everything else in the prompt (BOS, the target's part).
        max_seq_len: the model's context.
        reserve: tokens kept free for the answer (generation budget or longest label).

    Returns:
        The largest ``k`` that fits (0 if not even the target fits; the caller then skips it).
    """
    room = max_seq_len - fixed_length - reserve
    k = 0
    for n in shot_lengths:
        if room - n < 0:
            break
        room -= n
        k += 1
    return k


def text_stop_ids(tokenizer: Any, newlines: bool = True) -> list[int]:
    """Ids that end a generated text answer: both modality markers and (``newlines``) the pieces
    holding a newline.

    A k-shot prompt's answers are followed by the next example's marker, so a model that
    learnt the format emits a marker (or EOS) after its answer. ``newlines=False`` lets an
    answer run over several lines (Meta's STSP protocol stops at the budget only).
    """
    ids = [tokenizer.text_marker_id, tokenizer.speech_marker_id]
    if newlines:
        for i in range(tokenizer.vocab_size):
            piece = tokenizer.piece_of(i)
            if piece == "<0x0A>" or "\n" in piece:
                ids.append(i)
    return sorted(set(ids))


def answer_budget(ref_tokens: int, ceiling: int, length_ratio: float = 2.0) -> int:
    """``min(ceiling, length_ratio × ref_tokens + 10)`` rounded up to a multiple of 25 (rows share batches).

    >>> answer_budget(12, 384), answer_budget(300, 384)
    (50, 384)
    """
    return int(min(ceiling, -(-int(length_ratio * ref_tokens + 10) // 25) * 25))


def clean_answer(tokenizer, ids: Sequence[int], stop_ids: Sequence[int]) -> str:
    """Generated ids → answer text: cut at the first stop id (marker, newline piece) or EOS, decode, first line."""
    stops = set(stop_ids) | {tokenizer.eos_id}
    body = []
    for i in ids:
        if i in stops:
            break
        body.append(i)
    return tokenizer.decode(body).split("\n")[0].strip()


def allowed_with(lm: Any, modality: str, ids: Sequence[int]) -> Any:
    """The vocabulary mask of a ``modality`` answer widened by ``ids`` (the stop ids that end it)."""
    allowed = lm.allowed_tokens(modality).clone()
    allowed[[i for i in ids if 0 <= i < allowed.numel()]] = True
    return allowed


def generate_by_budget(lm: Any, prompts: Sequence[Sequence[int]], budgets: Sequence[int], throughput: Throughput,
                       **kwargs: Any) -> list[list[int]]:
    """``lm.generate_batch_ids`` once per distinct budget (rows with equal budgets decode together:
    the engine takes one budget per call); outputs in prompt order, each call's stats added to
    ``throughput``. ``kwargs`` go to every call (mask, sampling, batch size, stop ids)."""
    outs: list[list[int]] = [[] for _ in prompts]
    for b in sorted(set(budgets)):
        idx = [i for i, x in enumerate(budgets) if x == b]
        got = lm.generate_batch_ids([prompts[i] for i in idx], max_new_tokens=b, **kwargs)
        throughput.add(getattr(lm, "last_stats", None))
        for i, o in zip(idx, got):
            outs[i] = o
    return outs


def choose_by_likelihood(
    lm: Any,
    prompts: Sequence[Sequence[int]],
    candidates: Sequence[Sequence[int]],
    *,
    batch_size: int = 16,
    normalize: bool = False,
    progress: bool = False,
) -> tuple[list[int], list[list[float]]]:
    """For each prompt, the index of the candidate continuation with the highest log-probability.

    Every (prompt, candidate) pair is scored in one batched ``score_continuations`` call (the
    prompt repeats across its candidates). ``normalize`` divides by the candidate's token count
    (length-normalised score; the plain sum favours short candidates).

    Returns:
        ``(best index per prompt, scores[prompt][candidate])``; ties go to the first candidate.
    """
    flat_p, flat_c = [], []
    for p in prompts:
        for c in candidates:
            flat_p.append(p)
            flat_c.append(c)
    scores = lm.score_continuations(flat_p, flat_c, batch_size=batch_size, progress=progress)
    k = len(candidates)
    table: list[list[float]] = []
    for i in range(len(prompts)):
        row = []
        for j in range(k):
            s = scores[i * k + j]
            row.append(s.sum_logprob / max(1, len(candidates[j])) if normalize else s.sum_logprob)
        table.append(row)
    best = [max(range(k), key=lambda j: (row[j], -j)) for row in table]
    return best, table
