"""Constants every stage shares: the audio sample rate, the speech streams' rates, the data subsets, the ignored label.

Defined here once; stages import them (``from spiritlm.constants import SAMPLE_RATE``).
"""

SAMPLE_RATE = 16_000
"""Hz of every waveform the tokenizers, the vocoder and the corpus exchange (HuBERT's rate)."""

STREAM_RATES: dict[str, float] = {"hubert": 25.0, "pitch": 12.5, "style": 1.0}
"""Hz of each speech token stream: HuBERT units, pitch VQ-VAE codes, style tokens (not deduplicated)."""

UNIT_HOP = 640
"""Samples per HuBERT unit at :data:`SAMPLE_RATE` (16000 / 25 Hz)."""

SUBSETS: tuple[str, ...] = ("speech", "text", "interleaved")
"""The three kinds of LM documents (Spirit LM samples each 1/3 of the time)."""

IGNORE_INDEX = -100
"""Label of a position that is not a training target (PyTorch's cross-entropy default)."""
