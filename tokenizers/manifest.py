"""Lenient reading of corpus manifests for the tokenizers.

The corpus manifest (JSONL, see DESIGN.md) has many fields; tokenizing needs only ``id`` and
``audio`` (``speaker`` when known), training also ``style``, ``split`` and ``phones``. This
reader takes whatever is present, resolves relative audio paths against the manifest's folder
and reports malformed lines with their line number.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field


@dataclass
class Item:
    """One manifest line. Times in seconds."""

    id: str
    audio: str
    speaker: str | None = None
    style: str | None = None
    split: str | None = None
    duration: float | None = None
    phones: list[tuple[str, float, float]] | None = None
    words: list[tuple[str, float, float]] | None = None
    extra: dict = field(default_factory=dict)


def _segments(value, key: str) -> list[tuple[str, float, float]] | None:
    if value is None:
        return None
    out = []
    for s in value:
        if isinstance(s, dict):
            out.append((str(s[key]), float(s["start"]), float(s["end"])))
        else:
            out.append((str(s[0]), float(s[1]), float(s[2])))
    return out


def read_items(path: str | os.PathLike) -> list[Item]:
    """Reads a JSONL manifest; raises ``ValueError`` naming the file and line on bad lines."""
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: manifest not found")
    base = os.path.dirname(os.path.abspath(path))
    items, seen = [], set()
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                uid, audio = str(d["id"]), str(d["audio"])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{lineno}: bad manifest line ({type(exc).__name__}: {exc})") from None
            if uid in seen:
                raise ValueError(f"{path}:{lineno}: duplicate id {uid!r}")
            seen.add(uid)
            if not os.path.isabs(audio):
                audio = os.path.join(base, audio)
            try:
                phones = _segments(d.get("phones"), "phone")
                words = _segments(d.get("words"), "word")
            except (KeyError, TypeError, ValueError, IndexError) as exc:
                raise ValueError(f"{path}:{lineno}: bad words/phones ({exc})") from None
            known = {"id", "audio", "speaker", "style", "split", "duration", "phones", "words"}
            items.append(Item(
                uid, audio,
                None if d.get("speaker") is None else str(d["speaker"]),
                None if d.get("style") is None else str(d["style"]),
                None if d.get("split") is None else str(d["split"]),
                None if d.get("duration") is None else float(d["duration"]),
                phones, words, {k: v for k, v in d.items() if k not in known},
            ))
    return items
