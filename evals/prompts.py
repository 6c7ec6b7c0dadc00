"""Few-shot prompts of every task (asr, ic, tts, stsp): one renderer of an example, one assembler.

An example is ``[Src]prompt`` + a joint + ``continuation`` (:func:`render_pair`): the output
modality's marker when the modality changes (``[Speech]units[Text]the cat``), a space or nothing
within one. A prompt is the examples, each followed by the task's separator, then the target
rendered like an example with an empty continuation (:func:`join_prompt`); the model continues it.

:func:`fit_prompt` turns one into token ids for a model's context: BOS, as many examples as fit
while ``reserve`` tokens stay free for the answer (dropped from the end, :func:`fit_shots`), the
target. Every part starts with a modality marker, where :meth:`TextTokenizer.encode` splits its
sentencepiece runs, so encoding the parts one by one gives the ids of the joined string (the
examples are encoded once per target, not once per number of examples tried).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from spiritlm.evals.engine import fit_shots
from spiritlm.formats import SPEECH_MARKER, TEXT_MARKER

__all__ = ["fit_prompt", "join_prompt", "marker", "render_pair"]


def marker(modality: str) -> str:
    """``[Text]`` or ``[Speech]``."""
    if modality not in ("text", "speech"):
        raise ValueError(f"modality must be 'text' or 'speech', got {modality!r}")
    return TEXT_MARKER if modality == "text" else SPEECH_MARKER


def render_pair(src: str, prompt: str, tgt: str, continuation: str, inner_markers: bool = False) -> str:
    """One example: the prompt in ``src``, the ``tgt`` marker when the modality changes (or always,
    with ``inner_markers``: Meta's STSP ``[Text]p[Text]c``; else a space between two texts), the continuation.

    >>> render_pair("speech", "[Hu1][Hu2]", "text", "hi there")
    '[Speech][Hu1][Hu2][Text]hi there'
    >>> render_pair("text", "i hate", "text", "this rain"), render_pair("text", "i hate", "text", "this rain", True)
    ('[Text]i hate this rain', '[Text]i hate[Text]this rain')
    """
    if src != tgt or inner_markers:
        joint = marker(tgt)
    else:
        joint = " " if src == "text" else ""
    return marker(src) + prompt + joint + continuation


def join_prompt(shots: Sequence[str], target: str, separator: str = "") -> str:
    """The prompt string (no BOS): every rendered example followed by ``separator``, then the target.

    >>> join_prompt(["[Speech][Hu1][Text]yes"], render_pair("speech", "[Hu3]", "text", ""))
    '[Speech][Hu1][Text]yes[Speech][Hu3][Text]'
    """
    return "".join(s + separator for s in shots) + target


def fit_prompt(tokenizer: Any, shots: Sequence[str], target: str, *, max_len: int, reserve: int, separator: str = "",
               alone: str | None = None) -> tuple[list[int], int]:
    """``(ids, k)``: the ids of ``[BOS] + join_prompt(shots[:k], target, separator)``, ``k`` the most
    examples (in order) that leave ``reserve`` tokens free within ``max_len``.

    Args:
        tokenizer: the LM's :class:`~spiritlm.text_tokenizer.TextTokenizer`.
        shots: rendered examples (:func:`render_pair`), each starting with a modality marker.
        target: the rendered target, starting with a modality marker.
        max_len: the model's context (tokens).
        reserve: tokens kept free for the answer (its budget, or the longest candidate).
        separator: what follows each example (a newline in Meta's STSP prompts).
        alone: the target as written when no example fits (Meta's STSP writes a zero-shot target
            differently); None: ``target``.

    Returns:
        ``k = 0`` when no example fits (the caller checks that the target itself fits).
    """
    parts = [*shots, target] + ([alone] if alone is not None else [])
    if any(not p.startswith((TEXT_MARKER, SPEECH_MARKER)) for p in parts):
        raise ValueError("every rendered example and the target must start with a modality marker")
    shot_ids = [tokenizer.encode(s + separator) for s in shots]
    target_ids = tokenizer.encode(target)
    k = fit_shots([len(s) for s in shot_ids], 1 + len(target_ids), max_len, reserve)
    if k == 0 and alone is not None:
        target_ids = tokenizer.encode(alone)
    return [tokenizer.bos_id] + [t for s in shot_ids[:k] for t in s] + target_ids, k
