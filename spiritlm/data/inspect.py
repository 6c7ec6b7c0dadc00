"""Readable dumps of a token directory: the summary and decoded documents, modality tagged."""

from __future__ import annotations

import json
import os
from pathlib import Path

from spiritlm.data.shards import SUMMARY_FILE, TokenDir
from spiritlm.formats import split_modalities
from spiritlm.text_tokenizer import SpiritTextTokenizer

_COLORS = {"text": "\033[32m", "speech": "\033[36m"}
_RESET = "\033[0m"


def render_modalities(s: str, max_speech_tokens: int = 24, color: bool = False) -> str:
    """Shows each modality span of an LM string behind a ``<<TEXT>>`` / ``<<SPEECH>>`` tag.

    Speech spans longer than ``max_speech_tokens`` tokens are cut, with the count of the rest.
    """
    parts = []
    for seg in split_modalities(s):
        if seg.modality == "text":
            body = seg.text
        else:
            body = "".join(seg.tokens[:max_speech_tokens])
            if len(seg.tokens) > max_speech_tokens:
                body += f"…(+{len(seg.tokens) - max_speech_tokens} tokens)"
        tag = f"<<{seg.modality.upper()}>>"
        parts.append(f"{_COLORS[seg.modality]}{tag}{_RESET} {body}" if color else f"{tag} {body}")
    return " ".join(parts)


def inspect_dir(
    data_dir: str | os.PathLike,
    num_examples: int = 2,
    max_speech_tokens: int = 24,
    color: bool = False,
    tokenizer: str | os.PathLike | None = None,
) -> str:
    """The text printed by ``spiritlm data inspect``."""
    tokens = TokenDir(data_dir)
    tok_path = Path(tokenizer) if tokenizer else tokens.tokenizer_path
    if tok_path is None:
        raise ValueError(f"{data_dir}: the index names no tokenizer; pass one")
    tok = SpiritTextTokenizer.load(tok_path)
    lines = [f"token directory {tokens.root} (vocabulary {tokens.vocab_size}, {tokens.dtype.name}, tokenizer {tok_path})"]
    summary_path = Path(data_dir) / SUMMARY_FILE
    if summary_path.is_file():
        lines += ["", "summary:", json.dumps(json.loads(summary_path.read_text()), indent=1)]
    for name, sub in tokens.subsets.items():
        lines += ["", f"== {name}: {sub.num_docs} documents, {sub.num_tokens} tokens"]
        for i in range(min(num_examples, sub.num_docs)):
            ids = sub.doc(i)
            lines.append(f"-- [{i}] {sub.doc_id(i)} ({len(ids)} tokens)")
            lines.append(render_modalities(tok.decode(ids), max_speech_tokens, color))
    return "\n".join(lines)
