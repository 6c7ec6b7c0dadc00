"""Limits of ``spiritlm serve`` (what one request may ask for, how many may wait) and its audio chunk size."""

from __future__ import annotations

from dataclasses import dataclass

from jsonargparse.typing import NonNegativeInt, PositiveFloat, PositiveInt


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
            smaller value sends the first audio after fewer LM tokens; every sample is computed once
            whatever the chunk, but each chunk adds a fixed per-call overhead (vocoder/README.md, "Streaming").
    """

    # the types are the `spiritlm serve` flags' (spiritlm.cli.flags_from): the parser refuses a bad value
    max_queue: NonNegativeInt = 4
    max_upload_mb: PositiveFloat = 20.0
    max_audio_seconds: PositiveFloat = 60.0
    max_new_tokens: PositiveInt = 500
    max_text_chars: PositiveInt = 4000
    chunk_frames: PositiveInt = 25

    def __post_init__(self) -> None:
        # the fields' types are the rules, for Python callers as for the flags' parser
        from dataclasses import asdict

        from spiritlm.cli import check_values

        check_values(type(self), **asdict(self))

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)
