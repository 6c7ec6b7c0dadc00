"""CTC forced alignment of transcripts to audio: word times for manifests that have only text.

``torchaudio.functional.forced_align`` finds the best path of a transcript's characters through
the frame-wise log-probabilities (emissions) of a character CTC model. Three kinds of model
(:func:`load_aligner`):

* a Hugging Face ``Wav2Vec2ForCTC`` / ``HubertForCTC`` folder (``config.json`` + processor files);
* ``mms_fa``: torchaudio's ``MMS_FA`` bundle (multilingual, romanised lower-case letters and a
  star token; its weights download on first use, so offline it fails in one line);
* a spiritlm CTC judge folder (``judge.json`` of ``spiritlm eval judges``), which the synthetic
  corpus can train without any download.

Text normalisation (:func:`spell_words`) maps each transcript word to the model's alphabet: case,
accents stripped when the bare letter exists, punctuation dropped, digits spelled out
(``num2words``), and characters the model cannot spell mapped to its star/unknown token -- or,
when it has none, the utterance is refused with the word named. Words with nothing to spell
(``--``) get no time and are left out of ``words``.

Scores: a word's score is ``exp(mean log-probability)`` of its characters over the frames the
path gives them (in (0, 1]); an utterance's is the same over all its words' frames.

Shapes: waveforms ``(samples,)`` float32 at the model's rate; emissions ``(frames, vocab)``
log-probabilities; times seconds.
"""

from __future__ import annotations

import decimal
import math
import os
import re
import unicodedata
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spiritlm.constants import SAMPLE_RATE

MMS_FA = "mms_fa"


# ------------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------------
class CtcModel:
    """A character CTC model seen by the aligner.

    Attributes:
        name: how messages name it (the folder, or ``mms_fa``).
        labels: token strings, index = emission column.
        blank: index of the CTC blank.
        star: index of the star/unknown token, or None.
        sep: index of the word separator (``|`` of wav2vec 2.0, space of the judge), or None.
        sample_rate: Hz of the waveforms it takes.
        samples_per_frame: hop of its emissions, in samples.
    """

    name: str
    labels: list[str]
    blank: int
    star: int | None = None
    sep: int | None = None
    sample_rate: int = SAMPLE_RATE
    samples_per_frame: int = 320

    def emissions(self, wavs: Sequence[np.ndarray]) -> list:
        """Log-probabilities ``(frames_i, vocab)`` (float32 CPU tensors) of a batch of waveforms."""
        raise NotImplementedError

    @property
    def frame_seconds(self) -> float:
        return self.samples_per_frame / self.sample_rate


class JudgeCtc(CtcModel):
    """The project's CTC ASR judge (:mod:`spiritlm.corpus.ctc`: log-mel -> conformer -> characters, 50 Hz)."""

    def __init__(self, directory: str, device: str = "cpu"):
        from spiritlm.corpus.ctc import LogMel, load_ctc_judge

        model, _ = load_ctc_judge(directory)
        self.model = model.to(device)
        self.features = LogMel(model.cfg.n_mels).to(device)
        self.device = device
        self.name = directory
        self.labels = ["<blank>", *model.cfg.alphabet]
        self.blank = 0
        self.sep = self.labels.index(" ") if " " in self.labels else None
        self.samples_per_frame = LogMel.hop * 2  # 10 ms log-mel frames, stride-2 front end

    def emissions(self, wavs):
        import torch

        from spiritlm.tensors import pad_batch

        with torch.inference_mode():
            batch, lengths = pad_batch([w if len(w) >= 400 else np.pad(w, (0, 400 - len(w))) for w in wavs])
            feats, frames = self.features(batch.to(self.device), lengths.to(self.device))
            lp, n = self.model(feats, frames)
        return [lp[i, : int(n[i])].float().cpu() for i in range(len(wavs))]


class HfCtc(CtcModel):
    """A Hugging Face CTC folder (``Wav2Vec2ForCTC``, ``HubertForCTC``, ... + its processor)."""

    def __init__(self, directory: str, device: str = "cpu"):
        from transformers import AutoFeatureExtractor, AutoModelForCTC, AutoTokenizer

        self.name = directory
        self.model = AutoModelForCTC.from_pretrained(directory).eval().to(device)
        self.extractor = AutoFeatureExtractor.from_pretrained(directory)
        tok = AutoTokenizer.from_pretrained(directory)
        vocab = tok.get_vocab()
        self.labels = [""] * self.model.config.vocab_size
        for piece, idx in vocab.items():
            if idx < len(self.labels):
                self.labels[idx] = piece
        self.blank = tok.pad_token_id if tok.pad_token_id is not None else 0
        unk = getattr(tok, "unk_token", None)
        self.star = vocab.get("*", vocab.get(unk) if unk else None)
        delim = getattr(tok, "word_delimiter_token", None) or "|"
        self.sep = vocab.get(delim)
        self.sample_rate = int(self.extractor.sampling_rate)
        self.samples_per_frame = int(np.prod(self.model.config.conv_stride))
        self.device = device

    def emissions(self, wavs):
        import torch

        inputs = self.extractor([np.asarray(w, dtype=np.float32) for w in wavs], sampling_rate=self.sample_rate,
                                return_tensors="pt", padding=True, return_attention_mask=True)
        mask = inputs.get("attention_mask")
        with torch.inference_mode():
            logits = self.model(inputs["input_values"].to(self.device),
                                attention_mask=None if mask is None else mask.to(self.device)).logits
        lp = logits.float().log_softmax(-1).cpu()
        lengths = self.model._get_feat_extract_output_lengths(torch.tensor([len(w) for w in wavs]))
        return [lp[i, : min(int(lengths[i]), lp.shape[1])] for i in range(len(wavs))]


class MmsCtc(CtcModel):
    """torchaudio's ``MMS_FA`` bundle (wav2vec 2.0 trained for multilingual forced alignment)."""

    def __init__(self, device: str = "cpu"):
        from torchaudio.pipelines import MMS_FA as bundle

        from spiritlm.errors import UserError

        try:
            self.model = bundle.get_model(with_star=True).eval().to(device)
        except Exception as e:  # URLError, HTTPError, RuntimeError from torch.hub: offline
            first = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
            raise UserError(
                f"--aligner mms_fa: cannot download the MMS_FA weights ({first}); offline, put them in "
                f"{os.path.join(_hub_dir(), 'checkpoints')} or pass a local Hugging Face CTC folder or a spiritlm judge"
            ) from None
        self.name = MMS_FA
        self.labels = list(bundle.get_labels(star="*"))
        self.blank = 0
        self.star = self.labels.index("*")
        self.sample_rate = int(bundle.sample_rate)
        self.samples_per_frame = 320
        self.device = device

    def emissions(self, wavs):
        import torch

        from spiritlm.tensors import pad_batch

        batch, lengths = pad_batch(wavs)
        with torch.inference_mode():
            em, n = self.model(batch.to(self.device), lengths.to(self.device))
        lp = em.float().log_softmax(-1).cpu()
        return [lp[i, : int(n[i])] for i in range(len(wavs))]


def _hub_dir() -> str:
    import torch

    return torch.hub.get_dir()


def load_aligner(spec: str, device: str = "cpu") -> CtcModel:
    """``mms_fa``, a spiritlm judge folder (``judge.json``) or a Hugging Face CTC folder (``config.json``).

    Raises:
        spiritlm.errors.UserError: none of these (the message names ``--aligner``).
    """
    from spiritlm.errors import UserError

    if spec.lower() == MMS_FA:
        return MmsCtc(device)
    d = Path(spec)
    if (d / "judge.json").is_file():
        try:
            return JudgeCtc(str(d), device)
        except ValueError as e:
            raise UserError(f"{e} (--aligner)") from None
    if (d / "config.json").is_file():
        return HfCtc(str(d), device)
    raise UserError(f"{spec}: not an aligner: expected mms_fa, a spiritlm CTC judge folder (judge.json) "
                    "or a Hugging Face CTC folder (config.json) (--aligner)")


# ------------------------------------------------------------------------------------------------
# Text -> tokens
# ------------------------------------------------------------------------------------------------
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'"})
_DIGITS = re.compile(r"\d+(?:[.,]\d+)*(?:st|nd|rd|th)?", re.IGNORECASE)


def spell_number(token: str) -> str:
    """Digits in words (``num2words``, English): ``1984`` -> ``one thousand, nine hundred and eighty-four``,
    ``3rd`` -> ``third``, ``2.5`` -> ``two point five``."""
    from num2words import num2words

    def one(m: re.Match) -> str:
        s = m.group(0)
        low = s.lower()
        if low.endswith(("st", "nd", "rd", "th")) and low[:-2].isdigit():
            return " " + num2words(int(low[:-2]), to="ordinal") + " "
        s = s.replace(",", "")
        try:
            return " " + num2words(float(s) if "." in s else int(s)) + " "
        except (ValueError, OverflowError, decimal.InvalidOperation):
            return " " + " ".join(num2words(int(d)) for d in s if d.isdigit()) + " "

    return _DIGITS.sub(one, token)


@dataclass
class SpelledWord:
    """A transcript word and the model tokens it is aligned with (empty: nothing to say)."""

    word: str
    tokens: list[int]
    unknown: str = ""  # characters sent to the star token


def spell_words(text: str, model: CtcModel) -> list[SpelledWord]:
    """Each whitespace-separated word of ``text`` in the model's tokens.

    Raises:
        ValueError: a word has a character the model cannot spell and the model has no
            star/unknown token (the message names the word and the character).
    """
    index = {lab: i for i, lab in enumerate(model.labels) if lab}
    letters = [lab for lab in model.labels if len(lab) == 1 and lab.isalpha()]
    upper = bool(letters) and sum(c.isupper() for c in letters) > sum(c.islower() for c in letters)
    out = []
    for word in text.split():
        spoken = spell_number(word.translate(_APOSTROPHES)) if any(c.isdigit() for c in word) else word.translate(_APOSTROPHES)
        spoken = spoken.upper() if upper else spoken.lower()
        tokens: list[int] = []
        unknown = ""
        for c in spoken:
            if c in index and index[c] not in (model.blank, model.sep):
                tokens.append(index[c])
                continue
            if c.isspace() or c == "-":  # inside a word (spelled numbers, hyphens): a separator when the model has one
                if model.sep is not None and tokens and tokens[-1] != model.sep:
                    tokens.append(model.sep)
                continue
            base = unicodedata.normalize("NFKD", c)
            base = "".join(b for b in base if not unicodedata.combining(b))
            if base and all(b in index for b in base):
                tokens += [index[b] for b in base]
                continue
            if unicodedata.category(c)[0] in "PSZC":  # punctuation, symbols, controls: not spoken
                continue
            if model.star is None:
                raise ValueError(f"word {word!r}: {model.name} cannot spell {c!r} and has no star/unknown token")
            if not tokens or tokens[-1] != model.star:
                tokens.append(model.star)
            unknown += c
        while tokens and tokens[-1] == model.sep:
            tokens.pop()
        out.append(SpelledWord(word, tokens, unknown))
    return out


# ------------------------------------------------------------------------------------------------
# Alignment
# ------------------------------------------------------------------------------------------------
@dataclass
class WordTime:
    """An aligned word: seconds from the start of the audio and its score in (0, 1]."""

    word: str
    start: float
    end: float
    score: float


def align_emission(emission, spelled: list[SpelledWord], model: CtcModel) -> tuple[list[WordTime], float]:
    """Forced alignment of spelled words to one emission ``(frames, vocab)``.

    Returns ``(words with times and scores, utterance score)``; words without tokens are left out.

    Raises:
        ValueError: the transcript needs more frames than the audio has, or has nothing to align.
    """
    import torch
    import torchaudio.functional as F

    targets: list[int] = []
    owner: list[int] = []  # word index of each target token, -1 for separators
    spoken = [i for i, w in enumerate(spelled) if w.tokens]
    if not spoken:
        raise ValueError("the transcript has no word the aligner can spell")
    for k, i in enumerate(spoken):
        if k and model.sep is not None:
            targets.append(model.sep)
            owner.append(-1)
        targets += spelled[i].tokens
        owner += [i] * len(spelled[i].tokens)
    repeats = sum(a == b for a, b in zip(targets, targets[1:]))
    frames = int(emission.shape[0])
    if len(targets) + repeats > frames:
        raise ValueError(f"the transcript needs {len(targets) + repeats} frames of {model.frame_seconds * 1000:.0f} ms "
                         f"but the audio gives {frames}: transcript too long for the audio?")
    with warnings.catch_warnings():  # torchaudio 2.9 announces forced_align's move; it is still the reference
        warnings.simplefilter("ignore")
        path, scores = F.forced_align(emission[None].float(), torch.tensor([targets], dtype=torch.int32), blank=model.blank)
        spans = F.merge_tokens(path[0], scores[0])
    if len(spans) != len(targets):  # forced_align emits every target once; guard against a surprise
        raise ValueError(f"internal: {len(spans)} token spans for {len(targets)} targets")
    sec = model.frame_seconds
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    logp: dict[int, list[float]] = {}
    frame_scores = scores[0]
    for span, w in zip(spans, owner):
        if w < 0:
            continue
        first.setdefault(w, span.start)
        last[w] = span.end
        logp.setdefault(w, []).extend(frame_scores[span.start : span.end].tolist())
    words = [
        WordTime(spelled[i].word, round(first[i] * sec, 6), round(last[i] * sec, 6), round(math.exp(sum(logp[i]) / len(logp[i])), 6))
        for i in spoken
    ]
    all_lp = [x for i in spoken for x in logp[i]]
    return words, math.exp(sum(all_lp) / len(all_lp))


def long_emission(model: CtcModel, wav: np.ndarray, window_seconds: float = 20.0, context_seconds: float = 2.0):
    """Emissions ``(frames, vocab)`` of a recording too long for one pass, computed in windows.

    Each window of ``window_seconds`` is run with ``context_seconds`` of audio on both sides and
    keeps only its own frames, so the seams see the same context as the middle.
    """
    import torch

    spf = model.samples_per_frame
    win = max(1, int(window_seconds * model.sample_rate) // spf) * spf
    ctx = int(context_seconds * model.sample_rate) // spf * spf
    pieces = []
    for s in range(0, len(wav), win):
        a, b = max(0, s - ctx), min(len(wav), s + win + ctx)
        em = model.emissions([wav[a:b]])[0]
        off = (s - a) // spf
        n = win // spf if s + win < len(wav) else em.shape[0] - off
        pieces.append(em[off : off + n])
    return torch.cat(pieces)


# ------------------------------------------------------------------------------------------------
# Manifests: sharded, resumable
# ------------------------------------------------------------------------------------------------
@dataclass
class AlignReport:
    """What one shard did (``errors``: ``id: reason`` of utterances it could not align)."""

    written: int = 0
    rejected: int = 0
    skipped: int = 0
    already_done: int = 0
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    merged: bool = False
    errors: list[str] = None  # type: ignore[assignment]

    def __post_init__(self):
        self.errors = [] if self.errors is None else self.errors


def rejects_path(out: str) -> str:
    """``OUT`` -> the rejects file next to it (``x.jsonl`` -> ``x.rejects.jsonl``)."""
    return (out[: -len(".jsonl")] if out.endswith(".jsonl") else out) + ".rejects.jsonl"


def _parts_dir(out: str) -> Path:
    return Path(out + ".parts")


def _read_part(path: Path) -> list[dict]:
    """Complete records of a shard's part file; a torn last line (a killed run) is cut off the file."""
    import json

    if not path.exists():
        return []
    good, keep_bytes = [], 0
    with open(path, "rb") as f:
        for line in f:
            try:
                rec = json.loads(line)  # jsonl: this shard's part file (aligned manifest lines, merged by the last shard)
                if not isinstance(rec, dict) or "id" not in rec:
                    raise ValueError
            except ValueError:
                break
            good.append(rec)
            keep_bytes += len(line)
    if keep_bytes != path.stat().st_size:
        with open(path, "r+b") as f:  # only this shard writes its part: safe to cut the torn tail
            f.truncate(keep_bytes)
    return good


def align_manifest(
    manifest: str,
    model: CtcModel,
    out: str,
    shard: int = 0,
    num_shards: int = 1,
    batch_size: int = 8,
    min_score: float = 0.0,
    max_seconds: float = 120.0,
    progress: bool = True,
) -> AlignReport:
    """Aligns shard ``shard`` of ``num_shards`` (utterance ``i`` goes to shard ``i % num_shards``).

    Each shard appends to ``OUT.parts/shard{I}-of-{N}.jsonl`` (aligned lines) and
    ``...rejects.jsonl`` (``{"id", "audio", "kind", "reason", "score"}``); a rerun skips what they
    hold. The shard that finds every shard done merges them, in manifest order, into ``OUT``
    (aligned utterances: ``words`` from the aligner, ``align_score`` and ``word_scores`` added)
    and :func:`rejects_path` (``OUT.rejects.jsonl``), both written atomically, and removes the parts.

    Rejected (``kind``): ``low_score`` (utterance score below ``min_score``), ``error`` (no
    transcript, unreadable audio, longer than ``max_seconds``, a word the model cannot spell,
    a transcript too long for the audio); errors also count in ``skipped``.
    """
    import time

    from tqdm import tqdm

    from spiritlm.corpus.manifest import Utterance, line_numbers, read_manifest

    t0 = time.perf_counter()
    utts = read_manifest(manifest)
    lines = line_numbers(manifest)
    parts = _parts_dir(out)
    parts.mkdir(parents=True, exist_ok=True)
    stem = f"shard{shard}-of-{num_shards}"
    part, rej = parts / f"{stem}.jsonl", parts / f"{stem}.rejects.jsonl"
    done_ids = {r["id"] for r in _read_part(part)} | {r["id"] for r in _read_part(rej)}
    mine = [u for i, u in enumerate(utts) if i % num_shards == shard]
    report = AlignReport(already_done=sum(u.id in done_ids for u in mine))
    todo = [u for u in mine if u.id not in done_ids]

    def reject(u: Utterance, kind: str, reason: str, score: float | None = None) -> None:
        _append_json(rej, {"id": u.id, "audio": u.audio, "kind": kind, "reason": reason, "score": score})
        if kind == "error":
            report.skipped += 1
            report.errors.append(f"{manifest}:{lines.get(u.id, '?')} ({u.id}): {reason}")
        else:
            report.rejected += 1

    bar = tqdm(total=len(todo), desc=f"align shard {shard}/{num_shards}", unit="utt", disable=not progress, mininterval=5)
    todo.sort(key=lambda u: u.duration)  # similar lengths share a batch
    for b in range(0, len(todo), batch_size):
        batch, wavs = _readable_batch(todo[b : b + batch_size], model, max_seconds, reject)
        ems = model.emissions(wavs) if wavs else []
        for (u, spelled), em, wav in zip(batch, ems, wavs):
            try:
                words, score = align_emission(em, spelled, model)
            except ValueError as e:
                reject(u, "error", str(e))
                continue
            report.audio_seconds += len(wav) / model.sample_rate
            if score < min_score:
                reject(u, "low_score", f"alignment score {score:.3f} < --min_score {min_score:g}", round(score, 6))
                continue
            _append_json(part, _aligned(u, words, score).to_json())
            report.written += 1
        bar.update(len(todo[b : b + batch_size]))
    bar.close()
    (parts / f"{stem}.done").write_text("")
    report.wall_seconds = time.perf_counter() - t0

    report.merged = _merge_if_all_done(out, parts, utts, num_shards)
    if report.merged:
        import shutil

        shutil.rmtree(parts, ignore_errors=True)
    return report

def _append_json(path: Path, rec: dict) -> None:
    """Appends ``rec`` as one JSON line to a shard's part file."""
    import json

    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(rec, ensure_ascii=False, allow_nan=False) + "\n")


def _aligned(u, words: list, score: float):
    """The manifest line of an aligned utterance: its ``words`` (clipped to its duration), with
    ``align_score`` and ``word_scores`` in its extra fields."""
    from spiritlm.corpus.manifest import Utterance, Word

    dur = u.duration
    return Utterance(**{**u.__dict__, "words": [Word(w.word, min(w.start, dur), min(w.end, dur)) for w in words],
                        "extra": {**u.extra, "align_score": round(score, 6), "word_scores": [w.score for w in words]}})


def _readable_batch(us: list, model: CtcModel, max_seconds: float, reject: Callable[..., None]) -> tuple[list, list]:
    """``([(utterance, spelled words)], [waveform])`` of the utterances that can be aligned; each
    other one goes to ``reject`` as an ``error`` (no transcript, too long, unspellable, unreadable)."""
    from spiritlm.audio import AudioError, load_audio

    batch, wavs = [], []
    for u in us:
        if not (u.text or "").strip():
            reject(u, "error", "no transcript (text is empty)")
            continue
        if u.duration > max_seconds:
            reject(u, "error", f"lasts {u.duration:.1f} s > --max_seconds {max_seconds:g}: cut it with spiritlm corpus segment first")
            continue
        try:
            spelled = spell_words(u.text, model)
            wav = load_audio(u.audio, target_rate=model.sample_rate)
        except (ValueError, AudioError) as e:
            reject(u, "error", str(e))
            continue
        batch.append((u, spelled))
        wavs.append(wav)
    return batch, wavs


def _merge_if_all_done(out: str, parts: Path, utts: list, num_shards: int) -> bool:
    """Once every shard is done, merges the parts in manifest order into ``out`` and its rejects
    file (atomically) and empties ``parts``; True when this call merged. The last shard to finish
    does it; a lock keeps two from racing."""
    import fcntl
    import json

    from spiritlm.corpus.manifest import Utterance, write_manifest

    with open(parts / "merge.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if all((parts / f"shard{i}-of-{num_shards}.done").exists() for i in range(num_shards)) and parts.exists():
            order = {u.id: i for i, u in enumerate(utts)}
            base = os.path.dirname(os.path.abspath(out))
            lines, rejects = [], []
            for i in range(num_shards):
                lines += _read_part(parts / f"shard{i}-of-{num_shards}.jsonl")
                rejects += _read_part(parts / f"shard{i}-of-{num_shards}.rejects.jsonl")
            lines.sort(key=lambda r: order.get(r["id"], len(order)))
            rejects.sort(key=lambda r: order.get(r["id"], len(order)))
            write_manifest(out, [Utterance.from_json(r, base) for r in lines])
            from spiritlm.atomic import atomic_file

            with atomic_file(rejects_path(out), encoding="utf-8") as f:
                f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejects))
            for p in parts.iterdir():
                if p.name != "merge.lock":
                    p.unlink()
            return True
    return False
