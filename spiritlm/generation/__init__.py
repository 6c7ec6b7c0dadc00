"""Generating interleaved text and speech with a Spirit LM (see :mod:`spiritlm.generation.lm`).

Modules: ``lm`` (:class:`SpiritLM`: prompts, the decoding loop, streaming, scoring), ``decoder``
(the LLaMA forward over fairseq2's modules with a static KV cache), ``sampling`` (batched greedy
and per-row seeded sampling), ``outputs`` (prompt and output formats, stream pieces),
``compat`` (model ↔ speech tokenizer ↔ vocoder ↔ prompt checks).
"""

from .compat import check_compatible, check_prompt_units
from .decoder import LlamaDecoder, UnsupportedModelError, check_supported
from .lm import ContinuationScore, DecodeStats, SpeechTokenizerLike, SpiritLM, VocoderLike
from .outputs import (
    GenerationOutput,
    OutputModality,
    StreamPiece,
    build_prompt,
    decode_tokens,
    speech_units_near,
)
from .sampling import pick_next, sample_next

__all__ = [
    "SpiritLM",
    "ContinuationScore",
    "DecodeStats",
    "GenerationOutput",
    "LlamaDecoder",
    "OutputModality",
    "SpeechTokenizerLike",
    "StreamPiece",
    "UnsupportedModelError",
    "VocoderLike",
    "build_prompt",
    "check_compatible",
    "check_prompt_units",
    "check_supported",
    "decode_tokens",
    "pick_next",
    "sample_next",
    "speech_units_near",
]
