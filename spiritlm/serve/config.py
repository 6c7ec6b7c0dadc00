"""Limits of ``spiritlm serve`` (what one request may ask for, how many may wait) and its audio chunk size."""

from __future__ import annotations

from dataclasses import dataclass

from spiritlm.errors import UserError


@dataclass(frozen=True)
class ServeLimits:
    """What the server accepts; each field is the ``spiritlm serve`` flag of the same name.

    Attributes:
        max_queue: requests that may wait while one runs (one model runs one request at a time);
            past that a request is answered 503 "busy" at once.
        max_upload_mb: largest request body (an audio upload plus the form), in MiB.
        max_audio_seconds: longest audio upload, in seconds (checked from the file's header
            before it is decoded).
        max_new_tokens: the most tokens one request may ask to generate.
        max_text_chars: the longest text prompt, in characters.
        chunk_frames: 40 ms frames per streamed audio chunk at least (``Vocoder.stream``): a
            smaller value sends the first audio after fewer LM tokens and costs more vocoder work
            (each chunk recomputes the generator's receptive field on both sides).
    """

    max_queue: int = 4
    max_upload_mb: float = 20.0
    max_audio_seconds: float = 60.0
    max_new_tokens: int = 500
    max_text_chars: int = 4000
    chunk_frames: int = 25

    def __post_init__(self) -> None:
        if self.max_queue < 0:
            raise UserError(f"--max_queue {self.max_queue}: must be >= 0 (0: no request waits)")
        for name in ("max_upload_mb", "max_audio_seconds"):
            if not getattr(self, name) > 0:
                raise UserError(f"--{name} {getattr(self, name)}: must be > 0")
        for name in ("max_new_tokens", "max_text_chars", "chunk_frames"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name} {getattr(self, name)}: must be at least 1")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)
