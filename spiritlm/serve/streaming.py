"""The streaming APIs the server drives, called from this module only.

``SpiritLM.stream`` (the decoder) yields one piece per generated token (``token_id``,
``modality`` ``"text"``/``"speech"``, ``text``: its text delta, ``unit``: its speech token
``"[Hu12]"``/``"[Pi3]"``/``"[St7]"`` or None); the pieces concatenate to what ``generate``
returns for the same arguments. ``Vocoder.stream`` turns an iterable of speech token strings
into float32 waveform chunks at the vocoder's rate whose concatenation is the whole-utterance
synthesis. Should either signature change, only this module follows.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol

import numpy as np


class Piece(Protocol):
    """What the server reads of one streamed token (``spiritlm.generation.StreamPiece``)."""

    token_id: int
    modality: str
    text: str
    unit: str | None


def stream_pieces(lm: Any, inputs: Sequence[tuple[str, str]], output_modality: str, **sampling: Any) -> Iterator[Piece]:
    """The decoder's pieces for ``inputs`` (text and speech token strings), one per token.

    ``sampling``: the keyword arguments of ``SpiritLM.generate`` (``max_new_tokens``,
    ``min_new_tokens``, ``do_sample``, ``temperature``, ``top_p``, ``top_k``, ``seed``).
    """
    return iter(lm.stream(list(inputs), output_modality=output_modality, **sampling))


def stream_audio(vocoder: Any, tokens: Iterable[str], *, speaker: int | str | None, style: int | str | None,
                 chunk_frames: int | None = None) -> Iterator[np.ndarray]:
    """The vocoder's waveform chunks (float32 ``(samples,)``) for a growing stream of speech tokens.

    ``speaker``/``style``: a row or a name of the vocoder's speaker / style-id tables (None: its
    default). ``chunk_frames``: 40 ms frames per chunk at least (None: the vocoder's default);
    smaller chunks come sooner and cost more.
    """
    kwargs: dict[str, Any] = {}
    if chunk_frames is not None:
        kwargs["chunk_frames"] = chunk_frames
    if speaker is not None:
        kwargs["speaker"] = speaker
    if style is not None:
        kwargs["style"] = style
    for chunk in vocoder.stream(tokens, **kwargs):
        yield np.asarray(chunk, dtype=np.float32).reshape(-1)


class RequestVoice:
    """The vocoder as ``SpiritLM`` calls it for a non-streamed answer, in one request's voice.

    ``SpiritLM`` vocodes each generated speech segment with ``vocoder.decode(units[, speaker=])``
    and asks the vocoder for the style to fill in (``default_code``, ``config``); this wrapper
    passes the request's speaker and style-id row on, so that the non-streamed answer is
    synthesised once, in the voice the streamed one uses.
    """

    def __init__(self, vocoder: Any, speaker: int | str | None, style: int | str | None) -> None:
        self.vocoder = vocoder
        self.speaker = speaker
        self.style = style

    def __getattr__(self, name: str) -> Any:  # config, default_code, sample_rate, ...
        return getattr(self.vocoder, name)

    def decode(self, units: dict[str, str], speaker: int | str | None = None) -> np.ndarray:
        kwargs: dict[str, Any] = {}
        spk = speaker if speaker is not None else self.speaker
        if spk is not None:
            kwargs["speaker"] = spk
        if self.style is not None:
            kwargs["style_id"] = self.style
        return np.asarray(self.vocoder.decode(units, **kwargs), dtype=np.float32).reshape(-1)
