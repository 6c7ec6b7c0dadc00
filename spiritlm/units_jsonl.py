"""Units JSONL files (Meta's unit dicts, one utterance a line): the one reader every stage uses.

A line is ``{"id", "audio", "hubert": "12 12 7 …", "pitch": "…", "style": "…"}`` (docs/formats.md).
:func:`iter_unit_lines` walks a file line by line and says, for each line, either its record or
why it is unusable — so a strict reader (:func:`read_units`, for ``data build``) raises on the
first bad line while a batch job (``vocoder synth``, the evals) skips and counts, and a resumable
writer (``tokenize``) finds the ids it already wrote (:func:`complete_ids`) with the same rules.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from spiritlm.errors import UserError
from spiritlm.formats import UnitFormatError, check_unit_dict


@dataclass(frozen=True)
class UnitLine:
    """One non-blank line of a units file: its record, or the reason it cannot be used."""

    lineno: int
    record: dict[str, Any] | None
    error: str | None = None
    torn: bool = False
    """True for a line that is not JSON (a writer killed mid-line); ``error`` says so too."""

    @property
    def id(self) -> str | None:
        if self.record is None or self.record.get("id") is None:
            return None
        return str(self.record["id"])


def iter_unit_lines(path: str | os.PathLike, *, check_streams: bool = True) -> Iterator[UnitLine]:
    """Yields every non-blank line of the units file ``path`` as a :class:`UnitLine`.

    A line is usable when it is a JSON object with a ``hubert`` stream and, with
    ``check_streams``, every stream present holds unit ids (integers >= 0).

    Raises:
        UnitFormatError: the file does not exist (flag ``--units``).
    """
    path = Path(path)
    if not path.is_file():
        raise UnitFormatError(f"{path}: units file not found (--units)")
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                msg = getattr(e, "msg", "not UTF-8")
                yield UnitLine(lineno, None, f"invalid JSON ({msg}); a line torn by an interrupted `spiritlm tokenize`?", torn=True)
                continue
            if not isinstance(rec, dict):
                yield UnitLine(lineno, None, f"a units record must be a JSON object, got {type(rec).__name__}")
                continue
            if "hubert" not in rec:
                yield UnitLine(lineno, rec, "a units record needs a 'hubert' field")
                continue
            if check_streams:
                try:
                    check_unit_dict(rec)
                except UnitFormatError as e:
                    yield UnitLine(lineno, rec, str(e))
                    continue
            yield UnitLine(lineno, rec)


def complete_ids(path: str | os.PathLike) -> tuple[set[str], list[int]]:
    """Ids of the complete records of ``path`` and the numbers of its torn lines (none if it is absent).

    For a resumable writer: a torn line (not JSON, or no ``id``) is ignored wherever it is, and the
    file is never rewritten (other shards' writers may be appending to it).
    """
    if not Path(path).exists():
        return set(), []
    ids: set[str] = set()
    torn: list[int] = []
    for line in iter_unit_lines(path, check_streams=False):
        if line.torn or line.id is None:
            torn.append(line.lineno)
        else:
            ids.add(line.id)
    return ids, torn


def read_units(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Reads a units JSONL file into ``{key: unit dict}``, strictly.

    Each line is indexed by its ``id`` when it has one and by its ``audio`` path (as written and
    resolved absolute) when it has one, so units written for a manifest can be matched either way.
    Every stream present must hold unit ids (integers >= 0). An id given twice is an error (no
    line silently wins); an audio path shared by lines of different ids matches none of them by
    path (they are still found by id).

    Raises:
        UnitFormatError: (a ``ValueError``) naming the file and line of a malformed record, or
            both lines of a duplicate id.
    """
    path = Path(path)
    out: dict[str, dict[str, Any]] = {}
    id_line: dict[str, int] = {}
    audio_line: dict[str, tuple[int, str | None]] = {}
    ambiguous: set[str] = set()
    for line in iter_unit_lines(path):
        lineno, rec = line.lineno, line.record
        if line.error is not None:
            hint = "; once every shard has finished, delete it (its utterance was redone)" if line.torn else ""
            raise UnitFormatError(f"{path}:{lineno}: {line.error}{hint}")
        uid = line.id
        if uid is not None:
            if uid in id_line:
                raise UnitFormatError(f"{path}:{lineno}: id {uid!r} already on line {id_line[uid]} (one line per utterance)")
            id_line[uid] = lineno
            out[uid] = rec
        if rec.get("audio"):
            audio = str(rec["audio"])
            p = Path(audio)
            for k in dict.fromkeys((audio, str((p if p.is_absolute() else path.parent / p).resolve()))):
                if k in audio_line:
                    first, first_id = audio_line[k]
                    if uid is None or first_id is None:
                        raise UnitFormatError(f"{path}:{lineno}: audio {audio!r} already on line {first} (one line per utterance)")
                    ambiguous.add(k)
                audio_line[k] = (lineno, uid)
                out.setdefault(k, rec)
        elif uid is None:
            raise UnitFormatError(f"{path}:{lineno}: a units record needs an 'id' or an 'audio' field")
    for k in ambiguous:
        if k not in id_line:
            del out[k]
    return out


class UtteranceLike(Protocol):
    id: str


def find_units(units: Mapping[str, dict], utt: UtteranceLike) -> dict | None:
    """The unit dict of ``utt`` in a :func:`read_units` mapping (by id, then by audio path)."""
    rec = units.get(utt.id)
    if rec is None and getattr(utt, "audio", None):
        audio = str(utt.audio)
        rec = units.get(audio) or units.get(str(Path(audio).resolve()))
    return rec


def units_mismatch(
    uid: str, audio: str | None, duration: float | None, rec: Mapping[str, Any], units_path: str | os.PathLike,
    tolerance_s: float = 0.12, tolerance_rel: float = 0.02,
) -> str | None:
    """Why the units row ``rec`` (found by id) was not made from this utterance's audio, or None.

    Units carry the path of the audio they were made from (``spiritlm tokenize`` writes it
    absolute; a relative one must be the units file's folder or the end of the audio's path): a
    different path, or a HuBERT stream whose length at 25 Hz is not the utterance's ``duration``
    (within ``tolerance_s`` + ``tolerance_rel`` of it), means units of another corpus whose ids
    overlap.
    """
    from spiritlm.constants import STREAM_RATES

    if audio and rec.get("audio"):
        p, mine = Path(str(rec["audio"])), Path(audio).resolve()
        if p.is_absolute():
            same = p.resolve() == mine
        else:  # relative to what is not recorded: the units file's folder, or any folder above the audio
            same = (Path(units_path).parent / p).resolve() == mine or mine.parts[-len(p.parts):] == p.parts
        if not same:
            return f"id {uid!r}: units made from {rec['audio']}, the manifest's audio is {audio}"
    if duration:
        hubert = rec.get("hubert")
        n = len(hubert.split()) if isinstance(hubert, str) else len(hubert or ())
        seconds = n / STREAM_RATES["hubert"]
        if abs(seconds - float(duration)) > tolerance_s + tolerance_rel * float(duration):
            return f"id {uid!r}: {n} unit frames = {seconds:.2f} s at 25 Hz, the manifest's audio lasts {float(duration):.2f} s"
    return None


def check_unit_ranges(path: str | os.PathLike, sizes: Mapping[str, int], hint: str = "") -> None:
    """Raises a :class:`UnitFormatError` naming ``path:line`` for the first id of a stream that is not below
    ``sizes[stream]`` (the units a tokenizer or vocoder has); streams absent from ``sizes`` or of size 0 are not checked.

    ``hint`` (e.g. ``"--text_tokenizer"``) ends the message: the flag that sets the sizes.
    """
    for line in iter_unit_lines(path):
        if line.record is None or line.error:
            continue
        for stream, size in sizes.items():
            value = line.record.get(stream)
            if not size or value is None:
                continue
            ids = value.split() if isinstance(value, str) else value
            top = max((int(x) for x in ids), default=-1)
            if top >= size:
                raise UnitFormatError(f"{path}:{line.lineno}: {stream} id {top} is beyond the {size} {stream} units of the "
                                      f"tokenizer (--units{', ' + hint if hint else ''})")


def load_units(path: str | os.PathLike, flag: str = "--units") -> dict[str, dict[str, Any]]:
    """:func:`read_units` of a file a command's ``flag`` names: a missing file or a bad line is a
    one-line :class:`~spiritlm.errors.UserError` naming the file (and line) and ``flag``.

    Rows are keyed by ``id`` and by ``audio`` path (as written and absolute), as :func:`read_units` does.
    """
    if not Path(path).is_file():
        raise UserError(f"{path}: no such units file ({flag})")
    try:
        return read_units(path)
    except ValueError as e:
        raise UserError(f"{e} ({flag})") from None
