"""Prompts in, segments and stream pieces out: the pure formats around the decoder.

* :func:`build_prompt`: ``[(modality, text_or_token_string), …]`` → the LM prompt string;
* :class:`GenerationOutput`: one text or speech segment of a generation;
* :class:`StreamPiece` and :class:`PieceDecoder`: generated ids → pieces as they are decoded;
* :func:`segments_of`: generated ids → segments (text, speech token string, unit dict);
* :func:`vocode_many`: unit dicts / token strings → waveforms in batches, refused items counted
  (the evaluations' path from generated or reference units to audio);
* :func:`speech_units_near`: the ``speech_units.json`` a model's data was built with.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from spiritlm.formats import SPEECH_MARKER, TEXT_MARKER, split_modalities

OutputModality = Literal["text", "speech", "arbitrary"]

__all__ = [
    "GenerationOutput",
    "OutputModality",
    "PieceDecoder",
    "StreamPiece",
    "build_prompt",
    "decode_tokens",
    "segments_of",
    "speech_units_near",
    "vocode_many",
]


@dataclass
class GenerationOutput:
    """One segment of a generation.

    Attributes:
        modality: ``"text"`` or ``"speech"``.
        content: the text; for speech the waveform returned by the vocoder when one is
            configured, otherwise the speech token string (``"[Hu12][Hu7]…"``).
        tokens: the speech token string of a speech segment (``None`` for text).
        units: the unit dict of a speech segment (``formats.string_to_units``).
    """

    modality: str
    content: Any
    tokens: str | None = None
    units: dict[str, str] | None = None


@dataclass(frozen=True)
class StreamPiece:
    """One generated token as :meth:`SpiritLM.stream` yields it.

    Attributes:
        token_id: the id.
        modality: ``"text"`` or ``"speech"``: the modality the token belongs to (a marker: the one
            it switches to; EOS: ``"text"``).
        text: the text this token adds (a text token; ``""`` while a multi-byte character is
            incomplete, a later piece then carries it); ``""`` for markers, EOS and speech
            tokens, except that the piece ending a text run carries any text still held back.
        unit: the speech token (``"[Hu12]"``, ``"[Pi3]"``, ``"[St7]"``) of a speech token, else None.
    """

    token_id: int
    modality: str
    text: str
    unit: str | None = None


def build_prompt(segments: Sequence[tuple[str, str]], output_modality: OutputModality) -> str:
    """Renders ``[(modality, text_or_token_string), …]`` as an LM prompt.

    Each segment is introduced by its marker; the output modality's marker is appended when it
    differs from the last segment's modality (``"arbitrary"`` appends nothing)::

        >>> build_prompt([("text", "the cat")], "speech")
        '[Text]the cat[Speech]'
    """
    parts: list[str] = []
    last = None
    for modality, content in segments:
        if modality not in ("text", "speech"):
            raise ValueError(f"input modality must be 'text' or 'speech', got {modality!r}")
        parts.append((TEXT_MARKER if modality == "text" else SPEECH_MARKER) + content)
        last = modality
    if output_modality in ("text", "speech") and output_modality != last:
        parts.append(TEXT_MARKER if output_modality == "text" else SPEECH_MARKER)
    elif output_modality not in ("text", "speech", "arbitrary"):
        raise ValueError(f"output_modality must be text, speech or arbitrary, got {output_modality!r}")
    return "".join(parts)


def decode_tokens(tokenizer: Any, ids: Sequence[int]) -> str:
    """Decodes ids to the LM string, speech pieces and markers kept verbatim."""
    return tokenizer.decode(list(ids))


def strip_eos(tokenizer: Any, ids: Sequence[int]) -> list[int]:
    """``ids`` without a final EOS."""
    eos = tokenizer.eos_id
    return list(ids[:-1]) if ids and ids[-1] == eos else list(ids)


def segments_of(tokenizer: Any, ids: Sequence[int], lead: str) -> tuple[str, list]:
    """Generated ids → ``(decoded string, formats.Segment list)``. ``lead`` is the modality the
    generation starts in (a continuation in the prompt's last modality carries no marker)."""
    string = decode_tokens(tokenizer, strip_eos(tokenizer, ids))
    return string, split_modalities((TEXT_MARKER if lead == "text" else SPEECH_MARKER) + string)


class PieceDecoder:
    """Turns generated ids into :class:`StreamPiece` one at a time.

    A text token's text is the growth of the decoded current text run (the ids since the last
    marker or speech token), so the pieces of a run join to what ``tokenizer.decode`` gives for
    it (sentencepiece's dummy-prefix rule and multi-byte characters included). Text held back
    while the run ends in an incomplete UTF-8 sequence comes with a later piece: the one that
    completes it, or the one that ends the run (a marker, a speech token, EOS, or the last token,
    ``last=True``), as the replacement character ``tokenizer.decode`` gives it.
    """

    def __init__(self, tokenizer: Any, lead: str) -> None:
        self.tok = tokenizer
        self.modality = lead
        self.run: list[int] = []
        self.emitted = ""
        self.speech = tokenizer.speech_token_mask()

    def _flush(self) -> str:
        """The held-back text of the current run, which then ends."""
        rest = self.tok.decode(self.run)[len(self.emitted):] if self.run else ""
        self.run, self.emitted = [], ""
        return rest

    def __call__(self, token_id: int, last: bool = False) -> StreamPiece:
        tok = self.tok
        if token_id in (tok.text_marker_id, tok.speech_marker_id):
            self.modality = "text" if token_id == tok.text_marker_id else "speech"
            return StreamPiece(token_id, self.modality, self._flush())
        if 0 <= token_id < len(self.speech) and self.speech[token_id]:
            self.modality = "speech"
            return StreamPiece(token_id, "speech", self._flush(), tok.piece_of(token_id))
        if token_id == tok.eos_id:
            return StreamPiece(token_id, "text", self._flush())
        self.modality = "text"
        self.run.append(token_id)
        text = tok.decode(self.run)
        if text.endswith("\ufffd") and not last:  # an incomplete multi-byte character: wait for its end
            return StreamPiece(token_id, "text", "")
        delta = text[len(self.emitted):]
        self.emitted = text
        return StreamPiece(token_id, "text", delta)


def speech_units_near(tokenizer_file: str | Path) -> dict[str, int] | None:
    """The ``speech_units.json`` beside a tokenizer model (``spiritlm data build`` writes it: the
    units per stream its units file uses), or ``None`` when there is none or it is unreadable."""
    path = Path(tokenizer_file).with_name("speech_units.json")
    try:
        counts = json.loads(path.read_text())
        counts = {str(k): int(v) for k, v in counts.items()}  # 0: the stream has no units at all
        return counts if counts.get("hubert", 0) > 0 else None
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def vocode_many(
    vocoder: Any,
    items: Sequence[str | dict],
    speaker: int | str | Sequence[int | str] = 0,
    stats: dict[str, int] | None = None,
) -> tuple[dict[int, Any], list[str]]:
    """Waveforms of the items the vocoder accepts (``{index: wav}``) and one message per refused item.

    Each item (an LM token string or a unit dict) is checked alone (``Vocoder.prepare``), so one
    unusable item (ids beyond the vocoder's tables; an expressive vocoder that stores no default
    pitch given HuBERT tokens only) is counted, not fatal; the accepted ones run as batches
    (``Vocoder.synthesize_prepared``). ``speaker``: one for all or one per item. An item without
    pitch or style tokens is voiced with the vocoder's default codes; ``stats["filled"]`` (when
    given) counts them.
    """
    from spiritlm.errors import UserError

    speakers = [speaker] * len(items) if isinstance(speaker, (int, str)) else list(speaker)
    prepared, index, errors = [], [], []
    for i, (u, spk) in enumerate(zip(items, speakers)):
        try:
            p = vocoder.prepare(u, speaker=spk)
        except (UserError, ValueError) as e:
            errors.append(str(e))
            continue
        prepared.append(p)
        index.append(i)
        if stats is not None and p.get("filled"):
            stats["filled"] = stats.get("filled", 0) + 1
    wavs = vocoder.synthesize_prepared(prepared) if prepared else []
    return dict(zip(index, wavs)), errors
