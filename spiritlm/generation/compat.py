"""Does a speech tokenizer, a vocoder or a speech prompt fit the LM? Checked at load, before any work.

A model's speech units are the units its training data had (``speech_units.json`` beside its
tokenizer, or the speech tokenizer's ``num_units``); its vocabulary may hold more slots (Meta's
501). A vocoder built for other units (a 501-unit base vocoder on a 100-unit model, a 50-unit
one) turns every generation into noise or fails after the decoding; a base vocoder on an
expressive model drops the pitch and style the model emits. A prompt unit the model never saw
(``[Hu150]`` on a 100-unit model) is a token it was never trained on. Each is refused with one
line naming the flags (``--model``, ``--speech_tokenizer``, ``--vocoder``, ``--speech``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from spiritlm.errors import UserError

__all__ = ["check_compatible", "check_prompt_units", "model_units"]

_STREAM_TOKEN = {"hubert": "Hu", "pitch": "Pi", "style": "St"}
_TOKEN_STREAM = {v: k for k, v in _STREAM_TOKEN.items()}


def model_units(tokenizer: Any, num_units: dict[str, int] | None) -> tuple[dict[str, int], bool]:
    """``(units per stream the model emits, whether they are known)``: the data's counts when
    known, else the vocabulary's slots (``known`` False)."""
    slots = {k: int(v) for k, v in (getattr(tokenizer, "num_units", None) or {}).items()}
    if num_units:
        return {s: min(int(num_units.get(s, 0)), slots.get(s, int(num_units.get(s, 0)))) for s in _STREAM_TOKEN}, True
    return {s: slots.get(s, 0) for s in _STREAM_TOKEN}, False


def check_compatible(tokenizer: Any, num_units: dict[str, int] | None, speech_tokenizer: Any, vocoder: Any) -> None:
    """Raises :class:`UserError` when the speech tokenizer or the vocoder does not fit the model.

    Args:
        tokenizer: the LM's text tokenizer (its ``num_units`` are the vocabulary's slots).
        num_units: the units the model's data had (``speech_units.json``), or None.
        speech_tokenizer: an object with ``num_units`` (or None / without: not checked).
        vocoder: an object with ``config.num_units``/``num_pitch``/``num_style`` (or None /
            without: not checked) and optionally ``default_code(stream)``.
    """
    units, known = model_units(tokenizer, num_units)
    stok_units = getattr(speech_tokenizer, "num_units", None)
    if stok_units:
        slots = getattr(tokenizer, "num_units", None) or {}
        for s in _STREAM_TOKEN:
            n = int(stok_units.get(s, 0) or 0)
            d = units[s]  # the data's largest unit + 1: a few of the tokenizer's units may be unused
            if known and n and d and (n < d or n > int(d * 1.1) + 1):
                raise UserError(f"the speech tokenizer (--speech_tokenizer) makes {n} {s} units but the model (--model) "
                                f"was trained on units 0..{d - 1} (speech_units.json): they come from different speech tokenizers")
            if s in slots and n > int(slots[s]):
                raise UserError(f"the speech tokenizer (--speech_tokenizer) makes {n} {s} units but the model's "
                                f"vocabulary (--model) has {slots[s]} [{_STREAM_TOKEN[s]}N] tokens")
        units, known = {s: int(stok_units.get(s, 0) or 0) for s in _STREAM_TOKEN}, True
    cfg = getattr(vocoder, "config", None)
    if cfg is None or not hasattr(cfg, "num_units"):
        return
    voc = {"hubert": int(cfg.num_units), "pitch": int(getattr(cfg, "num_pitch", 0) or 0),
           "style": int(getattr(cfg, "num_style", 0) or 0)}
    exact = bool(stok_units)  # the speech tokenizer's table sizes; speech_units.json holds the largest unit seen + 1
    for s in ("pitch", "style"):
        if units[s] and not voc[s]:
            raise UserError(f"the model (--model) emits {s} tokens ([{_STREAM_TOKEN[s]}N]) but the vocoder (--vocoder) "
                            f"has no {s} input: use an expressive vocoder")
        default_code = getattr(vocoder, "default_code", None)
        if voc[s] and not units[s] and callable(default_code) and default_code(s) is None:
            raise UserError(f"the vocoder (--vocoder) needs a {s} stream that the model (--model) never emits, and "
                            f"stores no default_{s} code to fill in")
    for s in _STREAM_TOKEN:
        n, v = units[s], voc[s]
        if not n or (not v and s != "hubert"):
            continue
        if exact and v != n:
            raise UserError(f"the vocoder (--vocoder) has {v} {s} codes but the speech tokenizer (--speech_tokenizer) "
                            f"makes {n}: they come from different speech tokenizers")
        if v < n:
            what = f"was trained on {s} units 0..{n - 1} (speech_units.json)" if known else \
                f"can emit [{_STREAM_TOKEN[s]}0]..[{_STREAM_TOKEN[s]}{n - 1}]"
            raise UserError(f"the vocoder (--vocoder) has {v} {s} codes but the model (--model) {what}")
        # the data may leave a few units unused, not most of them: a far larger table is another tokenizer's
        if known and not exact and v > int(n * 1.1) + 1:
            raise UserError(f"the vocoder (--vocoder) has {v} {s} codes but the model (--model) was trained on {s} "
                            f"units 0..{n - 1} (speech_units.json): they come from different speech tokenizers")


def check_prompt_units(tokens: Sequence[str], num_units: dict[str, int] | None, tokenizer: Any) -> None:
    """Raises :class:`UserError` for a speech token (``"[Hu150]"``) beyond the model's units
    (``num_units``, else its vocabulary's slots)."""
    units, known = model_units(tokenizer, num_units)
    if not any(units.values()):
        return  # nothing known about the units: the tokenizer's encode decides
    for t in tokens:
        stream = _TOKEN_STREAM.get(t[1:3])
        if stream is None:
            continue
        n = int(t[3:-1])
        if n >= units[stream]:
            what = "units its data had (speech_units.json)" if known else "tokens in its vocabulary"
            limit = f"[{_STREAM_TOKEN[stream]}0]..[{_STREAM_TOKEN[stream]}{units[stream] - 1}]" if units[stream] else "none"
            raise UserError(f"speech prompt token {t}: the model (--model) has {units[stream]} {stream} {what}: "
                            f"{limit} (--speech)")
