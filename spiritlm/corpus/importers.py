"""Importers: corpora researchers already have -> manifests (``docs/formats.md``) that point at the source audio.

Each importer returns an :class:`ImportResult`: the utterances it could read and one line per
item it skipped (``path:line: problem``), so that ``spiritlm corpus import`` writes what is good,
counts what is not and exits non-zero unless ``--allow_skips true``. Nothing is copied: ``audio``
is the absolute path of the source file; only the audio header is read (sample rate, length).

* :func:`import_librispeech` -- ``SPEAKER/CHAPTER/SPEAKER-CHAPTER.trans.txt`` + ``*.flac``; word
  times from the public LibriSpeech alignments (``*.alignment.txt``: ``UTT ",W1,W2,,W3," "e1,e2,e3"``,
  end times in seconds, an empty word is silence) or Montreal Forced Aligner TextGrids (``words``
  tier, read with ``praatio``).
* :func:`import_folder` -- audio files with a same-stem ``.txt``/``.lab`` transcript; speaker,
  style and split from the relative path via a pattern such as ``{speaker}/{style}/*``.
* :func:`import_lhotse` / :func:`export_lhotse` -- lhotse ``CutSet`` or ``RecordingSet`` +
  ``SupervisionSet`` manifests (jsonl / jsonl.gz), word times in ``supervision.alignment["word"]``;
  done with lhotse itself, whose recipes cover LibriSpeech, Libriheavy, MLS, GigaSpeech, ...
* :func:`import_hf` -- Hugging Face ``datasets`` saved with ``save_to_disk`` or as parquet, with an
  ``Audio`` column read undecoded with pyarrow; audio held inside the dataset (it has no file to
  point at) is written once to ``OUT/audio/``, the one exception to "nothing is copied".

Times are seconds, sample rates Hz.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from spiritlm.corpus.manifest import Phone, Utterance, Word

#: Audio files the importers pick up (what soundfile / libsndfile reads).
AUDIO_EXTENSIONS = (".flac", ".wav", ".ogg", ".opus", ".mp3")
#: Transcript files of :func:`import_folder`, in order of preference.
TEXT_EXTENSIONS = (".txt", ".lab")
#: Word labels of aligners that mark silence or noise, not words (MFA, Kaldi).
SILENCE_LABELS = frozenset({"", "sil", "sp", "spn", "<eps>", "<sil>"})
#: An alignment may end this much after the audio (rounding of the aligner's frame clock), seconds.
END_SLACK = 0.05


@dataclass
class ImportResult:
    """What an importer read: ``utterances`` and one ``path[:line]: problem`` line per skipped item."""

    utterances: list[Utterance] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------
# shared helpers
# ------------------------------------------------------------------------------------------------
def _audio_header(path: str) -> tuple[int, int]:
    """``(sample_rate, num_samples)`` of a mono file; raises ValueError naming the problem."""
    from spiritlm.audio import AudioError, audio_info

    try:
        info = audio_info(path)
    except AudioError as e:
        raise ValueError(str(e)) from None
    if info.num_samples == 0:
        raise ValueError(f"{path}: empty audio (0 samples)")
    if info.channels != 1:
        raise ValueError(f"{path}: {info.channels} channels; spiritlm manifests hold mono audio")
    return info.sample_rate, info.num_samples


def split_of_path(path: str) -> str | None:
    """``train`` / ``valid`` / ``test`` from a LibriSpeech-style folder name (``train-clean-100``,
    ``dev-other``, ``test-clean``) anywhere in ``path``; None when there is none."""
    names = {"train": "train", "dev": "valid", "valid": "valid", "test": "test"}
    for part in reversed(Path(path).parts):
        m = re.match(r"(train|dev|valid|test)(?:[-_.]|$)", part.lower())
        if m:
            return names[m.group(1)]
    return None


def too_long(duration: float, max_duration: float) -> str:
    """The reason a recording is refused by ``--max_duration``."""
    return f"lasts {duration:.1f} s > --max_duration {max_duration:g} (--segment_long true cuts it)"


def _check_words_match(words: list[str], text: str, where: str) -> None:
    """Raises ValueError when an alignment's words are not the transcript's (case-insensitive)."""
    ref = text.split()
    a = [w.lower() for w in words]
    b = [w.lower() for w in ref]
    if a == b:
        return
    k = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    got = words[k] if k < len(words) else "<end>"
    want = ref[k] if k < len(ref) else "<end>"
    raise ValueError(
        f"{where}: alignment disagrees with the transcript at word {k + 1}: {got!r} where the transcript has "
        f"{want!r} ({len(words)} aligned words, {len(ref)} in the transcript)"
    )


def _finish_words(spans: list[tuple[str, float, float]], duration: float, where: str) -> list[Word]:
    """Words of an alignment, clamped to the audio; raises ValueError on times the audio cannot hold."""
    out = []
    for w, s, e in spans:
        if e > duration + END_SLACK:
            raise ValueError(f"{where}: word {w!r} ends at {e:.3f} s but the audio lasts {duration:.3f} s")
        if s > e or (out and s < out[-1].end - 1e-6):
            raise ValueError(f"{where}: word {w!r} at {s:.3f}-{e:.3f} s is not in time order")
        out.append(Word(w, round(max(0.0, s), 6), round(min(e, duration), 6)))
    return out


# ------------------------------------------------------------------------------------------------
# held-out splits (--split_by)
# ------------------------------------------------------------------------------------------------
#: What ``--split_by`` takes: keep the source's splits, or hash utterances / whole speakers into splits.
SPLIT_BY = ("none", "utterance", "speaker")
#: Default ``--split_fractions``.
DEFAULT_SPLIT_FRACTIONS = {"train": 0.9, "valid": 0.05, "test": 0.05}


def check_split_fractions(fractions: dict[str, float] | None) -> dict[str, float]:
    """``--split_fractions`` (None: :data:`DEFAULT_SPLIT_FRACTIONS`) checked: non-empty names,
    fractions in (0, 1] summing to 1 (within 1e-6). Raises ValueError naming the flag."""
    import json

    fractions = dict(DEFAULT_SPLIT_FRACTIONS if fractions is None else fractions)
    if not fractions:
        raise ValueError("--split_fractions is empty: give split names and fractions, e.g. "
                         '{"train": 0.9, "valid": 0.05, "test": 0.05}')
    for name, f in fractions.items():
        if not str(name).strip():
            raise ValueError(f"--split_fractions: an empty split name ({fractions})")
        if not isinstance(f, (int, float)) or not 0.0 < float(f) <= 1.0:
            raise ValueError(f"--split_fractions: split {name!r} has fraction {f!r}; each must be in (0, 1]")
    total = sum(float(f) for f in fractions.values())
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"--split_fractions {json.dumps(fractions)} sums to {total:g}, not 1")
    return {str(k): float(v) for k, v in fractions.items()}


def split_point(key: str, seed: int) -> float:
    """A uniform number in [0, 1) that depends only on ``seed`` and ``key`` (SHA-256)."""
    import hashlib

    digest = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign_splits(utts: list[Utterance], by: str, fractions: dict[str, float], seed: int = 0) -> list[Utterance]:
    """Sets every utterance's ``split`` (in place; returns ``utts``) for ``--split_by utterance|speaker``.

    Each key (the utterance id, or the speaker: whole speakers go to one split, so the splits are
    speaker-disjoint) is hashed with the seed to a point in [0, 1) (:func:`split_point`), and the
    split is the one whose slice of the cumulative fractions (names in sorted order) holds it.
    The fractions are therefore met in expectation over keys, counted in utterances
    (``utterance``) or in speakers (``speaker``), not in hours; and an utterance's split depends
    only on its own key: adding files to a corpus never moves the ones already imported (the rule
    of TensorFlow's speech-commands ``which_set``, not a global shuffle).

    ``by == "none"`` leaves the splits as the source gave them.
    """
    if by == "none":
        return utts
    if by not in SPLIT_BY:
        raise ValueError(f"--split_by must be one of {', '.join(SPLIT_BY)}, got {by!r}")
    names = sorted(fractions)
    edges, acc = [], 0.0
    for n in names:
        acc += fractions[n]
        edges.append(acc)
    edges[-1] = 1.0  # rounding of the sum: the last slice reaches 1
    memo: dict[str, str] = {}
    for u in utts:
        key = u.id if by == "utterance" else u.speaker
        if key not in memo:
            x = split_point(key, seed)
            memo[key] = names[next(i for i, e in enumerate(edges) if x < e)]
        u.split = memo[key]
    return utts


def check_splits_filled(utts: list[Utterance], by: str, fractions: dict[str, float], seed: int) -> None:
    """Raises ValueError (one line naming the flags) when a split asked for got no utterance."""
    import json

    got = {u.split for u in utts}
    empty = [n for n in sorted(fractions) if n not in got]
    if not empty or not utts:
        return
    keys = len({u.id if by == "utterance" else u.speaker for u in utts})
    what = "utterances" if by == "utterance" else "speakers"
    hint = ("--split_by utterance, a --pattern that names more speakers, " if by == "speaker" else "") + \
        "larger --split_fractions for it, or another --seed"
    named = ("split " if len(empty) == 1 else "splits ") + ", ".join(map(repr, empty))
    raise ValueError(f"--split_by {by}: {named} got no utterance ({keys} {what} hashed with --seed {seed} "
                     f"into --split_fractions {json.dumps(fractions)}); try {hint}")


# ------------------------------------------------------------------------------------------------
# alignment files
# ------------------------------------------------------------------------------------------------
_ALIGN_LINE = re.compile(r'^(\S+)\s+"([^"]*)"\s+"([^"]*)"\s*$')


def read_librispeech_alignment(path: str | os.PathLike) -> dict[str, tuple[int, list[tuple[str, float, float]]]]:
    """Reads a public LibriSpeech word-alignment file (``SPEAKER-CHAPTER.alignment.txt``).

    Each line is ``UTT ",W1,W2,,W3," "e1,e2,e3,..."``: the words (empty = silence) and their end
    times in seconds; a word starts where the previous item ended.

    Returns:
        ``{utt_id: (line number, [(word, start s, end s), ...])}`` without the silences.

    Raises:
        ValueError: ``path:line: problem`` for a malformed line.
    """
    path = os.fspath(path)
    out: dict[str, tuple[int, list[tuple[str, float, float]]]] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            m = _ALIGN_LINE.match(line.strip())
            if not m:
                raise ValueError(f'{path}:{lineno}: expected UTT ",W1,W2," "e1,e2,e3" (the LibriSpeech alignment layout)')
            uid, words_s, ends_s = m.groups()
            words = words_s.split(",")
            try:
                ends = [float(x) for x in ends_s.split(",")]
            except ValueError:
                raise ValueError(f"{path}:{lineno}: end times must be numbers of seconds, got {ends_s[:60]!r}") from None
            if len(words) != len(ends):
                raise ValueError(f"{path}:{lineno}: {len(words)} words (silences included) but {len(ends)} end times")
            spans, prev = [], 0.0
            for w, e in zip(words, ends):
                if e < prev:
                    raise ValueError(f"{path}:{lineno}: end times go back in time ({e} after {prev})")
                if w.strip().lower() not in SILENCE_LABELS:
                    spans.append((w.strip(), prev, e))
                prev = e
            if uid in out:
                raise ValueError(f"{path}:{lineno}: utterance {uid} is aligned twice (first on line {out[uid][0]})")
            out[uid] = (lineno, spans)
    return out


def read_textgrid_words(path: str | os.PathLike, tier: str = "words") -> list[tuple[str, float, float]]:
    """The labelled intervals of a TextGrid's word tier (Montreal Forced Aligner writes ``words``).

    Silence/noise labels (:data:`SILENCE_LABELS`) are dropped. Raises ValueError naming the file.
    """
    from praatio import textgrid

    path = os.fspath(path)
    try:
        tg = textgrid.openTextgrid(path, includeEmptyIntervals=False)
    except Exception as e:  # praatio raises a variety of parse errors
        raise ValueError(f"{path}: not a readable TextGrid ({str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__})") from None
    names = list(tg.tierNames)
    name = next((n for n in names if n.lower() == tier.lower()), None)
    if name is None:  # MFA multi-speaker grids name tiers "SPEAKER - words"
        name = next((n for n in names if n.lower().endswith(f"- {tier.lower()}")), None)
    if name is None:
        raise ValueError(f"{path}: no {tier!r} tier (tiers: {', '.join(names) or 'none'})")
    return [(e.label.strip(), float(e.start), float(e.end)) for e in tg.getTier(name).entries
            if e.label.strip().lower() not in SILENCE_LABELS]


def find_alignments(root: str | os.PathLike) -> dict[str, tuple[str, int | None, list[tuple[str, float, float]]]]:
    """Every word alignment under ``root`` (a folder or one file): public ``*.alignment.txt`` files
    and ``*.TextGrid`` files (utterance id = file stem).

    Returns ``{utt_id: (file, line or None, [(word, start, end)])}``; raises ValueError on a bad file.
    """
    root = os.fspath(root)
    if not os.path.exists(root):
        raise ValueError(f"{root}: no such file or folder (--alignments)")
    files = [root] if os.path.isfile(root) else sorted(str(p) for p in Path(root).rglob("*") if p.is_file())
    out: dict[str, tuple[str, int | None, list[tuple[str, float, float]]]] = {}
    for f in files:
        if f.endswith(".alignment.txt"):
            for uid, (lineno, spans) in read_librispeech_alignment(f).items():
                out[uid] = (f, lineno, spans)
        elif f.lower().endswith(".textgrid"):
            out[Path(f).stem] = (f, None, read_textgrid_words(f))
    if not out:
        raise ValueError(f"{root}: no *.alignment.txt or *.TextGrid file (--alignments)")
    return out


# ------------------------------------------------------------------------------------------------
# LibriSpeech
# ------------------------------------------------------------------------------------------------
def import_librispeech(
    src: str | os.PathLike, alignments: str | os.PathLike | None = None, split: str | None = None
) -> ImportResult:
    """Reads a LibriSpeech-layout tree: ``SPEAKER/CHAPTER/SPEAKER-CHAPTER.trans.txt`` (``UTT WORDS...``
    per line) next to ``UTT.flac`` files.

    Args:
        src: the tree (``LibriSpeech/train-clean-100`` or any folder above chapter folders).
        alignments: a folder or file of word alignments (:func:`find_alignments`); utterances
            it does not cover keep ``words`` empty.
        split: the split of every utterance; default from the folder names (:func:`split_of_path`).

    Skips (one line each): a transcript line without text, a transcript line without its audio,
    audio without a transcript line, unreadable or empty audio, an alignment that disagrees with
    the transcript or runs past the audio.
    """
    src = os.fspath(src)
    if not os.path.isdir(src):
        raise ValueError(f"{src}: not a folder (--src)")
    aligned = find_alignments(alignments) if alignments is not None else {}
    result = ImportResult()
    trans_files = sorted(Path(src).rglob("*.trans.txt"))
    if not trans_files:
        raise ValueError(f"{src}: no SPEAKER-CHAPTER.trans.txt file under it (--src; the LibriSpeech layout)")
    for tf in trans_files:
        tf = tf.resolve()
        folder = tf.parent
        audio = {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in AUDIO_EXTENSIONS}
        seen = set()
        with open(tf, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                parts = line.strip().split(maxsplit=1)
                uid = parts[0]
                where = f"{tf}:{lineno}"
                if uid in seen:
                    result.skipped.append(f"{where}: utterance {uid} is listed twice")
                    continue
                seen.add(uid)
                if len(parts) < 2:
                    result.skipped.append(f"{where}: utterance {uid} has no transcript text")
                    continue
                text = " ".join(parts[1].split())
                if uid not in audio:
                    result.skipped.append(f"{where}: no audio file {uid}.flac in {folder}")
                    continue
                try:
                    rate, n = _audio_header(str(audio[uid]))
                    duration = n / rate
                    words: list[Word] = []
                    if uid in aligned:
                        afile, aline, spans = aligned[uid]
                        awhere = f"{afile}:{aline}" if aline is not None else afile
                        _check_words_match([w for w, _, _ in spans], text, f"{awhere} ({uid}, transcript {where})")
                        # keep the transcript's spelling: the alignment only brings the times
                        words = _finish_words([(t, s, e) for t, (_, s, e) in zip(text.split(), spans)], duration, awhere)
                except ValueError as e:
                    result.skipped.append(str(e))
                    continue
                speaker = uid.split("-")[0]
                result.utterances.append(Utterance(
                    id=uid, audio=str(audio[uid].resolve()), sample_rate=rate, duration=duration,
                    speaker=speaker, style="neutral", text=text, words=words,
                    split=split if split is not None else split_of_path(str(tf.relative_to(Path(src).resolve().parent))),
                ))
        for stem, p in audio.items():
            if stem not in seen:
                result.skipped.append(f"{p}: audio without a line in {tf.name}")
    return result


# ------------------------------------------------------------------------------------------------
# A folder of one's own recordings
# ------------------------------------------------------------------------------------------------
def pattern_regex(pattern: str) -> re.Pattern:
    """A path pattern -> regex over the audio's path relative to ``--src``, without extension.

    ``{name}`` captures one path component or part of one (``speaker``, ``style``, ``split``,
    ``id``; ``{_}`` matches without capturing), ``*`` any characters but ``/``, ``**`` any
    characters. ``{speaker}/{style}/*`` reads ``spk1/happy/take3``.
    """
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "{":
            j = pattern.find("}", i)
            if j < 0:
                raise ValueError(f"--pattern {pattern!r}: '{{' without '}}'")
            name = pattern[i + 1 : j]
            if name == "_":
                out.append("[^/]+?")
            elif name.isidentifier():
                out.append(f"(?P<{name}>[^/]+?)")
            else:
                raise ValueError(f"--pattern {pattern!r}: {{{name}}} is not a field name")
            i = j + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    try:
        return re.compile("".join(out))
    except re.error as e:
        raise ValueError(f"--pattern {pattern!r}: {e}") from None


def import_folder(
    src: str | os.PathLike, pattern: str | None = None, split: str | None = None, require_text: bool = True
) -> ImportResult:
    """Audio files under ``src`` with a same-stem ``.txt`` or ``.lab`` transcript (one utterance each).

    Args:
        src: the folder.
        pattern: :func:`pattern_regex` pattern matched against each audio path relative to
            ``src`` (without extension) giving ``speaker``/``style``/``split``/``id``; a file it
            does not match is skipped. Default: speaker = the parent folder's name (``"unknown"``
            for files directly in ``src``).
        split: the split of every utterance (overrides the pattern's).
        require_text: skip audio without a transcript (else keep it with an empty text: speech only).

    Ids are the relative path without extension, ``/`` replaced by ``-``.
    """
    src = os.fspath(src)
    if not os.path.isdir(src):
        raise ValueError(f"{src}: not a folder (--src)")
    rx = pattern_regex(pattern) if pattern else None
    result = ImportResult()
    seen: dict[str, str] = {}
    files = sorted(p for p in Path(src).rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
    if not files:
        raise ValueError(f"{src}: no audio file ({', '.join(AUDIO_EXTENSIONS)}) under it (--src)")
    for p in files:
        rel = p.relative_to(src).with_suffix("").as_posix()
        fields: dict[str, str] = {}
        if rx is not None:
            m = rx.fullmatch(rel)
            if not m:
                result.skipped.append(f"{p}: its path {rel!r} does not match --pattern {pattern!r}")
                continue
            fields = {k: v for k, v in m.groupdict().items() if v is not None}
        uid = fields.get("id") or rel.replace("/", "-")
        if uid in seen:
            result.skipped.append(f"{p}: id {uid!r} already used by {seen[uid]}")
            continue
        text_file = next((p.with_suffix(e) for e in TEXT_EXTENSIONS if p.with_suffix(e).is_file()), None)
        if text_file is None and require_text:
            result.skipped.append(f"{p}: audio without a transcript ({p.stem}.txt or {p.stem}.lab; or --require_text false)")
            continue
        text = ""
        if text_file is not None:
            raw = text_file.read_text(encoding="utf-8")
            text = " ".join(raw.split())
            if not text and require_text:
                result.skipped.append(f"{text_file}:1: empty transcript")
                continue
        try:
            rate, n = _audio_header(str(p))
        except ValueError as e:
            result.skipped.append(str(e))
            continue
        seen[uid] = str(p)
        speaker = fields.get("speaker") or (p.parent.name if p.parent != Path(src) else "unknown")
        result.utterances.append(Utterance(
            id=uid, audio=str(p.resolve()), sample_rate=rate, duration=n / rate, speaker=speaker,
            style=fields.get("style", "neutral"), text=text, words=[],
            split=split if split is not None else fields.get("split"),
        ))
    return result


# ------------------------------------------------------------------------------------------------
# lhotse
# ------------------------------------------------------------------------------------------------
#: Utterance fields carried in a lhotse supervision's ``custom`` dict (lhotse has no field for them).
_CUSTOM_FIELDS = ("style", "sentiment", "intent", "split")


def _load_cuts(src: str, supervisions: str | None):
    from lhotse import CutSet, RecordingSet, SupervisionSet, load_manifest

    try:
        man = load_manifest(src)
    except Exception as e:
        raise ValueError(f"{src}: not a lhotse manifest ({str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__}) (--src)") from None
    if isinstance(man, CutSet):
        return man
    if isinstance(man, SupervisionSet):
        raise ValueError(f"{src}: a SupervisionSet; pass the RecordingSet as --src and this file as --supervisions")
    if not isinstance(man, RecordingSet):
        raise ValueError(f"{src}: a lhotse {type(man).__name__}; expected a CutSet or a RecordingSet (--src)")
    if supervisions is None:  # lhotse recipes write <corpus>_recordings_<part> next to <corpus>_supervisions_<part>
        guess = os.path.join(os.path.dirname(src), os.path.basename(src).replace("recordings", "supervisions"))
        if guess == src or not os.path.exists(guess):
            raise ValueError(f"{src}: a RecordingSet without supervisions; pass --supervisions PATH")
        supervisions = guess
    sups = load_manifest(supervisions)
    if not isinstance(sups, SupervisionSet):
        raise ValueError(f"{supervisions}: not a lhotse SupervisionSet (--supervisions)")
    from lhotse import MonoCut

    by_recording: dict[str, list] = {}
    for sup in sups:
        by_recording.setdefault(sup.recording_id, []).append(sup)
    # one cut per whole recording, named after it (CutSet.from_manifests would name it "<id>-0")
    return [MonoCut(id=r.id, start=0.0, duration=r.duration, channel=0, recording=r, supervisions=by_recording.get(r.id, []))
            for r in man]


def import_lhotse(src: str | os.PathLike, supervisions: str | os.PathLike | None = None, split: str | None = None) -> ImportResult:
    """Reads a lhotse ``CutSet`` (or ``RecordingSet`` + ``SupervisionSet``) into utterances.

    Each cut must cover a whole single-file, mono recording (spiritlm manifests hold whole
    files: cut ones out with lhotse's ``save_audios`` or ``spiritlm corpus segment``). Its
    supervisions give ``text`` (joined), ``speaker``, and ``words`` from ``alignment["word"]``
    (only when every supervision has one); ``custom`` gives style, sentiment, intent, split and
    any other key written by :func:`export_lhotse`.
    """
    src = os.fspath(src)
    cuts = _load_cuts(src, None if supervisions is None else os.fspath(supervisions))
    result = ImportResult()
    for cut in cuts:
        where = f"{src}: cut {cut.id}"
        rec = getattr(cut, "recording", None)
        if rec is None:
            result.skipped.append(f"{where}: no recording")
            continue
        if len(rec.sources) != 1 or rec.sources[0].type != "file":
            result.skipped.append(f"{where}: recording {rec.id} is not one audio file (sources: {[s.type for s in rec.sources]})")
            continue
        if rec.num_channels != 1:
            result.skipped.append(f"{where}: recording {rec.id} has {rec.num_channels} channels; spiritlm manifests hold mono audio")
            continue
        if abs(cut.start) > 1e-3 or abs(cut.duration - rec.duration) > 1e-3:
            result.skipped.append(
                f"{where}: covers {cut.start:.2f}-{cut.end:.2f} s of a {rec.duration:.2f} s recording; spiritlm manifests "
                "hold whole files (save the cuts' audio with lhotse, or import the recordings and run spiritlm corpus segment)"
            )
            continue
        if rec.num_samples == 0:
            result.skipped.append(f"{where}: empty audio (0 samples)")
            continue
        sups = sorted(cut.supervisions, key=lambda s: s.start)
        custom = dict(sups[0].custom or {}) if sups else {}
        words: list[Word] = []
        if sups and all(s.alignment and "word" in s.alignment for s in sups):
            for s in sups:
                for item in s.alignment["word"]:
                    words.append(Word(item.symbol, round(item.start, 6), round(item.start + item.duration, 6)))
        audio = rec.sources[0].source
        if not os.path.isabs(audio):
            audio = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(src)), audio))
        extra = {k: v for k, v in custom.items() if k not in _CUSTOM_FIELDS and k != "phones"}
        phones = custom.get("phones")
        result.utterances.append(Utterance(
            id=cut.id, audio=audio, sample_rate=int(rec.sampling_rate), duration=rec.num_samples / rec.sampling_rate,
            speaker=(sups[0].speaker if sups and sups[0].speaker is not None else "unknown"),
            style=custom.get("style", "neutral"), text=" ".join((s.text or "").strip() for s in sups).strip(), words=words,
            phones=None if phones is None else [Phone(p["phone"], p["start"], p["end"]) for p in phones],
            sentiment=custom.get("sentiment"), intent=custom.get("intent"),
            split=split if split is not None else custom.get("split"), extra=extra,
        ))
    return result


def export_lhotse(utts: Iterable[Utterance], out: str | os.PathLike) -> int:
    """Writes utterances as a lhotse ``CutSet`` (``out``: ``.jsonl.gz`` or ``.jsonl``); returns the count.

    One recording, one cut and one supervision per utterance, all with the utterance's id; word
    times go to ``alignment["word"]``; style, sentiment, intent, split, phones and other keys to the
    supervision's ``custom``, so :func:`import_lhotse` gives the manifest back unchanged.
    """
    from lhotse import AudioSource, CutSet, MonoCut, Recording, SupervisionSegment
    from lhotse.supervision import AlignmentItem

    recs, sups = [], []
    for u in utts:
        recs.append(Recording(
            id=u.id, sources=[AudioSource(type="file", channels=[0], source=os.path.abspath(u.audio))],
            sampling_rate=int(u.sample_rate), num_samples=u.num_samples, duration=u.num_samples / u.sample_rate,
        ))
        custom = {k: getattr(u, k) for k in _CUSTOM_FIELDS if getattr(u, k) is not None}
        if u.phones is not None:
            custom["phones"] = [p.to_json() for p in u.phones]
        custom.update(u.extra)
        alignment = {"word": [AlignmentItem(w.word, w.start, round(w.end - w.start, 6)) for w in u.words]} if u.words else None
        sups.append(SupervisionSegment(
            id=u.id, recording_id=u.id, start=0.0, duration=u.num_samples / u.sample_rate, channel=0,
            text=u.text, speaker=u.speaker, alignment=alignment, custom=custom or None,
        ))
    cuts = CutSet.from_cuts(MonoCut(id=r.id, start=0.0, duration=r.duration, channel=0, recording=r, supervisions=[s])
                            for r, s in zip(recs, sups))
    from spiritlm.atomic import atomic_path

    out = os.fspath(out)
    # lhotse picks the format from the name, so the temporary name keeps the extension
    with atomic_path(out, suffix=".jsonl.gz" if out.endswith(".gz") else ".jsonl") as tmp:
        cuts.to_file(str(tmp))
    return len(recs)


# ------------------------------------------------------------------------------------------------
# Hugging Face datasets
# ------------------------------------------------------------------------------------------------
#: Default columns of :func:`import_hf`, the first one present wins.
HF_TEXT_COLUMNS = ("text", "sentence", "transcription")
HF_SPEAKER_COLUMNS = ("speaker_id", "speaker", "client_id")
#: Formats of embedded audio kept as they are (soundfile's format name -> extension).
_KEEP_FORMATS = {"WAV": ".wav", "FLAC": ".flac", "OGG": ".ogg", "MP3": ".mp3"}
#: Rows read at a time (an Arrow batch; embedded audio makes rows large).
_HF_BATCH = 64


@dataclass
class HFColumns:
    """Which column holds what in a Hugging Face dataset (None: the defaults of :func:`import_hf`)."""

    audio: str | None = None
    text: str | None = None
    speaker: str | None = None
    id: str | None = None
    words: str | None = None


@dataclass
class _HFSource:
    """One table to read: a split of a ``save_to_disk`` folder, or one parquet file."""

    where: str  # how skips and errors name it: the split's folder or the parquet file
    split: str | None  # the dataset's own split name
    prefix: str  # ids of a dataset without an id column: PREFIX-ROW
    schema: object  # pyarrow.Schema
    features: object  # datasets.Features
    batches: object  # () -> iterator of pyarrow tables / record batches
    base: str  # folder that relative audio paths are relative to


def hf_split(name: str | None) -> str | None:
    """A dataset's split name as a manifest split: ``train*`` -> train, ``validation*`` / ``valid*`` /
    ``dev*`` -> valid, ``test*`` -> test (``train.clean.100``, ``validation``, ``test.other``);
    any other name is kept."""
    if name is None:
        return None
    m = re.match(r"(train|validation|valid|dev|test)(?![a-z])", name.lower())
    if not m:
        return name
    return {"train": "train", "test": "test"}.get(m.group(1), "valid")


def _hf_sources(src: str) -> list[_HFSource]:
    """The tables of ``src``: a ``save_to_disk`` folder (``Dataset`` or ``DatasetDict``), a parquet
    file, or a folder of parquet files (searched recursively, sorted by path)."""
    import pyarrow.parquet as pq
    from datasets import DatasetDict, Features, load_from_disk

    if not os.path.exists(src):
        raise ValueError(f"{src}: no such file or folder (--src)")

    def first_line(e: Exception) -> str:
        return str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__

    if os.path.isdir(src) and any(os.path.isfile(os.path.join(src, f)) for f in ("dataset_dict.json", "state.json")):
        try:  # Arrow files + JSON metadata, memory-mapped; nothing is unpickled
            loaded = load_from_disk(src, keep_in_memory=False)
        except Exception as e:
            raise ValueError(f"{src}: not a readable datasets save_to_disk folder ({first_line(e)}) (--src)") from None
        parts = loaded.items() if isinstance(loaded, DatasetDict) else [(None, loaded)]
        out = []
        for name, ds in parts:
            table = ds.with_format("arrow")
            out.append(_HFSource(
                where=os.path.join(src, name) if name is not None else src, split=name,
                prefix=name if name is not None else Path(src).name, schema=ds.data.schema, features=ds.features,
                batches=lambda t=table: t.iter(batch_size=_HF_BATCH), base=os.path.abspath(src),
            ))
        return out
    files = [src] if os.path.isfile(src) else sorted(str(p) for p in Path(src).rglob("*.parquet") if p.is_file())
    if not files:
        raise ValueError(f"{src}: neither a datasets save_to_disk folder (dataset_dict.json or state.json) nor parquet "
                         "files (--src)")
    out = []
    for f in files:
        try:
            pf = pq.ParquetFile(f)
            features = Features.from_arrow_schema(pf.schema_arrow)
        except Exception as e:
            raise ValueError(f"{f}: not a readable parquet file ({first_line(e)}) (--src)") from None
        # the Hub's layout: SPLIT-00000-of-00004.parquet, or SPLIT/*.parquet
        m = re.match(r"(.+?)-\d{5}-of-\d{5}$", Path(f).stem)
        rel_parent = Path(f).parent.relative_to(src) if os.path.isdir(src) else Path(".")
        split = m.group(1) if m else (rel_parent.name if rel_parent.name else None)
        out.append(_HFSource(
            where=f, split=split, prefix=split or Path(f).stem, schema=pf.schema_arrow, features=features,
            batches=lambda pf=pf: pf.iter_batches(batch_size=_HF_BATCH), base=os.path.dirname(os.path.abspath(f)),
        ))
    return out


def _hf_column(src: _HFSource, given: str | None, defaults: tuple[str, ...], flag: str) -> str | None:
    """The column named by ``flag`` (an error naming the file and the flag when it is missing), or
    the first default present, or None."""
    names = src.schema.names
    if given is not None:
        if given not in names:
            raise ValueError(f"{src.where}: no column {given!r} ({flag}; columns: {', '.join(names)})")
        return given
    return next((c for c in defaults if c in names), None)


def _hf_audio_column(src: _HFSource, given: str | None) -> str:
    import pyarrow as pa
    from datasets import Audio

    col = _hf_column(src, given, ("audio",), "--audio_column")
    if col is None:
        typed = [k for k, v in src.features.items() if isinstance(v, Audio)]
        if len(typed) != 1:
            raise ValueError(f"{src.where}: no audio column ({'several Audio columns: ' + ', '.join(typed) if typed else 'none named audio and none of type Audio'}; "
                             f"name it with --audio_column; columns: {', '.join(src.schema.names)})")
        col = typed[0]
    t = src.schema.field(col).type
    if not (pa.types.is_string(t) or pa.types.is_large_string(t)
            or (pa.types.is_struct(t) and {"bytes", "path"} & {t.field(i).name for i in range(t.num_fields)})):
        raise ValueError(f"{src.where}: column {col!r} holds {t}, not audio (an Audio column: bytes and/or path) (--audio_column)")
    return col


def _hf_words_column(src: _HFSource, given: str | None) -> str | None:
    import pyarrow as pa

    col = _hf_column(src, given, ("words",), "--words_column")
    if col is None:
        return None
    t = src.schema.field(col).type
    keys = ({t.value_type.field(i).name for i in range(t.value_type.num_fields)}
            if (pa.types.is_list(t) or pa.types.is_large_list(t)) and pa.types.is_struct(t.value_type) else set())
    if not ({"start", "end"} <= keys and keys & {"word", "text"}):
        if given is None:
            return None  # a column that happens to be called words but holds something else
        raise ValueError(f"{src.where}: column {col!r} holds {t}, not word times (a list of {{word, start, end}}) (--words_column)")
    return col


def _safe_name(uid: str) -> str:
    """A file name for an utterance id: the id itself when it is a plain name, else a cleaned one
    with a hash of the id (two ids never share a file)."""
    import hashlib

    name = re.sub(r"[^A-Za-z0-9._-]", "_", uid)[:150]
    if name == uid and not uid.startswith("."):
        return name
    return f"{name.lstrip('.') or 'utt'}-{hashlib.sha1(uid.encode()).hexdigest()[:10]}"


def _embedded_audio(data: bytes, dest: Path, label: str, reuse: bool, max_duration: float | None = None) -> str:
    """Writes audio bytes held inside a dataset to ``dest`` + extension, once; returns the path.

    Mono audio in a format the project reads (WAV, FLAC, OGG, MP3) is written as it is (the same
    bytes, so the same samples); other audio is decoded, downmixed (channel mean, as
    :func:`spiritlm.audio.load_audio`) and written as WAV (16-bit when the source is, float
    otherwise) at its own sample rate. Every clip is decoded once to check it (readable, finite,
    at least 80 ms) before it is written, atomically. With ``reuse`` a file a previous run wrote
    (same size, for bytes kept as they are) is kept without decoding again. A clip longer than
    ``max_duration`` seconds (its header says) is refused before anything is written.

    Raises:
        ValueError: unreadable, empty, too short, too long or non-finite audio (the message starts with ``label``).
    """
    from spiritlm.atomic import atomic_path
    from spiritlm.audio import AudioError, audio_info, load_audio, write_audio

    try:
        info = audio_info(data, name=label)
    except AudioError as e:
        raise ValueError(str(e)) from None
    if max_duration is not None and info.sample_rate > 0 and info.duration > max_duration:
        raise ValueError(f"{label}: {too_long(info.duration, max_duration)}")
    keep = info.channels == 1 and info.format in _KEEP_FORMATS
    path = dest.with_name(dest.name + (_KEEP_FORMATS[info.format] if keep else ".wav"))
    if reuse and path.is_file() and (not keep or path.stat().st_size == len(data)):
        return str(path)
    try:
        wav = load_audio(data, target_rate=info.sample_rate, name=label)  # checks it; downmixes; no resampling
    except AudioError as e:
        raise ValueError(str(e)) from None
    with atomic_path(path, suffix=path.suffix) as tmp:
        if keep:
            tmp.write_bytes(data)
        else:
            write_audio(tmp, wav, info.sample_rate, subtype="PCM_16" if info.subtype == "PCM_16" else "FLOAT")
    return str(path)


def remove_unreferenced_audio(audio_dir: str | os.PathLike, utts: Iterable[Utterance]) -> int:
    """Removes the files of ``audio_dir`` (``OUT/audio`` of :func:`import_hf`) that no utterance
    points at: clips of rows refused after their audio was written (cut by ``--segment_long``
    into ``OUT/segments/``, or an import replaced with other rows). Returns how many it removed."""
    audio_dir = Path(audio_dir)
    if not audio_dir.is_dir():
        return 0
    kept = {os.path.realpath(u.audio) for u in utts}
    gone = 0
    for p in audio_dir.iterdir():  # temporaries of killed runs (.NAME.tmp-PID.EXT) are _remove_stale_audio's
        if p.is_file() and not p.name.startswith(".") and os.path.realpath(p) not in kept:
            p.unlink()
            gone += 1
    return gone


def _remove_stale_audio(audio_dir: Path) -> None:
    """Removes the temporary files that killed runs left in ``audio_dir`` (their process is gone)."""
    from spiritlm.atomic import _remove_stale

    if audio_dir.is_dir():
        for tmp in {t.name.split(".tmp-")[0][1:] for t in audio_dir.glob(".*.tmp-*")}:
            _remove_stale(audio_dir / tmp)


def import_hf(
    src: str | os.PathLike,
    out_dir: str | os.PathLike,
    columns: HFColumns | None = None,
    split: str | None = None,
    require_text: bool = True,
    reuse_audio: bool = True,
    max_duration: float | None = None,
) -> ImportResult:
    """Reads a Hugging Face ``datasets`` dataset with an ``Audio`` column.

    ``src`` is a folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk`` (each
    split of a DatasetDict becomes the manifest ``split`` of its rows, see :func:`hf_split`), a
    parquet file, or a folder of parquet files (the Hub's ``SPLIT-00000-of-00004.parquet`` or
    ``SPLIT/*.parquet`` names give the split). The audio column is read undecoded (its ``bytes``
    and ``path``, with pyarrow): this module decodes it with soundfile, so datasets' own audio
    decoding (torchcodec) is never needed, and nothing is unpickled.

    Columns (``columns``; default in brackets, the first present):

    * audio [``audio``, else the one column of type ``Audio``]: a row whose ``bytes`` are empty
      and whose ``path`` names an existing file (absolute, or relative to the dataset's folder),
      or whose ``path`` is an absolute existing file, points at that file (no copy); otherwise the
      bytes are written once to ``OUT/audio/ID.EXT`` (:func:`_embedded_audio`).
    * text [``text``, ``sentence``, ``transcription``]; speaker [``speaker_id``, ``speaker``,
      ``client_id``; else ``"unknown"``]; id [``id``; else ``PREFIX-ROW``, PREFIX the split
      name or the file's stem, ROW counted from 0 over the split]; ``style`` when there is such a column.
    * words [``words``]: a list of ``{word (or text), start, end}`` (seconds) per row; silence
      labels are dropped, the rest must be the transcript's words (its spelling is kept).

    Args:
        src: the dataset (see above).
        out_dir: the import's output folder; embedded audio goes to ``out_dir/audio/``.
        columns: column names (None: all defaults).
        split: the split of every utterance (overrides the dataset's).
        require_text: skip rows with an empty transcript, and refuse a dataset without a text
            column (false: keep them as speech only).
        reuse_audio: keep audio files a previous, interrupted run wrote (false: write them again).
        max_duration: refuse rows longer than this (seconds), before their audio is written.

    Skips (one ``FILE: row I (id ID): problem`` line each): audio bytes that do not decode, empty,
    shorter than 80 ms or non-finite audio, a path that does not exist, a multi-channel file
    pointed at, an empty transcript, a missing id, an id used twice, word times that disagree
    with the transcript or run past the audio.

    Raises:
        ValueError: ``src`` is not such a dataset, or a column named by a flag is missing or has
            the wrong type (the message names the file and the flag).
    """
    src = os.fspath(src)
    columns = columns or HFColumns()
    sources = _hf_sources(src)
    audio_dir = Path(out_dir).resolve() / "audio"
    _remove_stale_audio(audio_dir)
    plans = [_hf_plan(s, columns, require_text) for s in sources]  # every column checked before any row is read
    result = ImportResult()
    seen: dict[str, str] = {}
    counters: dict[str, int] = {}
    for plan in plans:
        _hf_read_table(plan, result, seen, counters, split, require_text, audio_dir, reuse_audio, max_duration)
    return result


def _hf_plan(s: _HFSource, columns: HFColumns, require_text: bool) -> _HFPlan:
    """The columns :func:`import_hf` reads from one table; ValueError naming the table and the flag
    for a missing or mistyped column, or no transcript column while ``require_text``."""
    text_col = _hf_column(s, columns.text, HF_TEXT_COLUMNS, "--text_column")
    if text_col is None and require_text:
        raise ValueError(f"{s.where}: no transcript column ({', '.join(HF_TEXT_COLUMNS)}; name it with --text_column, or "
                         f"--require_text false for speech only; columns: {', '.join(s.schema.names)})")
    return _HFPlan(s, _hf_audio_column(s, columns.audio), text_col,
                   _hf_column(s, columns.speaker, HF_SPEAKER_COLUMNS, "--speaker_column"),
                   _hf_column(s, columns.id, ("id",), "--id_column"), _hf_words_column(s, columns.words),
                   _hf_column(s, None, ("style",), ""))


def _hf_read_table(plan: _HFPlan, result: ImportResult, seen: dict[str, str], counters: dict[str, int], split: str | None,
                   require_text: bool, audio_dir: Path, reuse_audio: bool, max_duration: float | None) -> None:
    """Adds one table's rows to ``result`` (an utterance, or a ``FILE: row I (id ID): problem`` skip);
    ``seen`` (id -> row label, for duplicates) and ``counters`` (rows per id prefix) run across tables."""
    s = plan.source
    row = -1
    for batch in s.batches():
        cols = {c: batch.column(c).to_pylist() for c in plan.wanted()}
        for k in range(batch.num_rows):
            row += 1
            n_prefix = counters.get(s.prefix, 0)
            counters[s.prefix] = n_prefix + 1
            uid = cols[plan.id][k] if plan.id else f"{s.prefix}-{n_prefix:06d}"
            uid = None if uid is None else str(uid).strip()
            label = f"{s.where}: row {row}" + (f" (id {uid})" if uid else "")
            try:
                utt = _hf_row(plan, uid, {c: v[k] for c, v in cols.items()}, label, split, require_text, audio_dir,
                              reuse_audio, seen, max_duration)
            except ValueError as e:
                msg = str(e)
                result.skipped.append(msg if msg.startswith(label) else f"{label}: {msg}")
                continue
            seen[utt.id] = label
            result.utterances.append(utt)


@dataclass
class _HFPlan:
    """A table of :func:`import_hf` and the names of its columns (None: absent)."""

    source: _HFSource
    audio: str
    text: str | None
    speaker: str | None
    id: str | None
    words: str | None
    style: str | None

    def wanted(self) -> list[str]:
        return list(dict.fromkeys(c for c in (self.audio, self.text, self.speaker, self.id, self.words, self.style) if c))


def _hf_row(plan: _HFPlan, uid: str | None, row: dict, label: str, split: str | None, require_text: bool,
            audio_dir: Path, reuse_audio: bool, seen: dict[str, str], max_duration: float | None = None) -> Utterance:
    """One row of :func:`import_hf` -> an utterance; raises ValueError (the skip's reason) for a bad row."""
    if not uid:
        raise ValueError(f"empty id (column {plan.id!r}; --id_column names another)")
    if uid in seen:
        raise ValueError(f"id {uid!r} already used by {seen[uid]}")
    text = " ".join(str(row[plan.text] or "").split()) if plan.text else ""
    if not text and require_text:
        raise ValueError(f"empty transcript (column {plan.text!r}; --require_text false keeps it as speech only)")
    spans = []
    for item in (row[plan.words] or []) if plan.words else []:
        w = item.get("word", item.get("text"))
        if w is None or item.get("start") is None or item.get("end") is None:
            raise ValueError(f"column {plan.words!r}: a word time without word, start or end: {item}")
        if str(w).strip().lower() not in SILENCE_LABELS:
            spans.append((str(w).strip(), float(item["start"]), float(item["end"])))
    if spans and not text:
        text = " ".join(w for w, _, _ in spans)
    where = f"{label}: column {plan.words!r}"
    if spans:  # before any audio is written
        _check_words_match([w for w, _, _ in spans], text, where)
    audio = row[plan.audio]
    if isinstance(audio, str):
        audio = {"bytes": None, "path": audio}
    data, path = (audio or {}).get("bytes"), (audio or {}).get("path")
    local = None
    if path and (os.path.isabs(path) or not data):  # an embedded clip's relative path only names it
        local = path if os.path.isabs(path) else os.path.join(plan.source.base, path)
        if not os.path.isfile(local):
            if not data:
                raise ValueError(f"no audio bytes, and its path {path!r} is not a file")
            local = None
    if local is not None:
        local = os.path.abspath(local)
    elif data:
        local = _embedded_audio(data, audio_dir / _safe_name(uid), f"{label}: audio bytes", reuse_audio, max_duration)
    else:
        raise ValueError(f"no audio (column {plan.audio!r} has neither bytes nor a path)")
    rate, n = _audio_header(local)
    if max_duration is not None and n / rate > max_duration:
        raise ValueError(too_long(n / rate, max_duration))
    words: list[Word] = []
    if spans:
        words = _finish_words([(t, a, b) for t, (_, a, b) in zip(text.split(), spans)], n / rate, where)
    speaker = row[plan.speaker] if plan.speaker else None
    style = row[plan.style] if plan.style else None
    return Utterance(
        id=uid, audio=local, sample_rate=rate, duration=n / rate,
        speaker="unknown" if speaker is None or str(speaker) == "" else str(speaker),
        style="neutral" if style is None or str(style) == "" else str(style), text=text, words=words,
        split=split if split is not None else hf_split(plan.source.split),
    )
