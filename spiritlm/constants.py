"""Constants every stage shares: the audio sample rate, the data subsets, the ignored label.

Defined here once; stages import them (``from spiritlm.constants import SAMPLE_RATE``).
"""

SAMPLE_RATE = 16_000
"""Hz of every waveform the tokenizers, the vocoder and the corpus exchange (HuBERT's rate)."""

SUBSETS: tuple[str, ...] = ("speech", "text", "interleaved")
"""The three kinds of LM documents (Spirit LM samples each 1/3 of the time)."""

IGNORE_INDEX = -100
"""Label of a position that is not a training target (PyTorch's cross-entropy default)."""
