"""Synthesis of the aligned speech-text corpus (``spiritlm corpus synth``).

Pipeline:

1. **Plan** (main process, sequential, cheap): for every utterance index decide its source,
   split, speaker, style, text and prosody. Global assignments (source and split counts,
   speaker balance) use an RNG seeded with ``seed``; everything about one utterance (its text,
   its voice parameters, its silences) uses an RNG derived from ``(seed, index)`` only. Texts are
   de-duplicated against earlier utterances, which is why planning is sequential.
2. **Render** (a process pool, ``workers`` processes): each worker initialises libespeak-ng
   once and renders utterances in forked children (see :mod:`spiritlm.corpus.espeak`), so the
   audio of an utterance depends on its plan only -- never on which worker rendered it or what
   it rendered before. Sentences are rendered separately and joined with silences of planned
   length; the result is resampled from espeak's 22050 Hz to ``sample_rate`` and written as
   16-bit PCM WAV.
3. **Write** ``manifest.jsonl`` (utterances in index order), ``stats.json`` (deterministic
   counts) and ``synth_report.json`` (wall time, throughput: the only run-dependent file).

The same configuration therefore gives byte-identical WAVs, manifest and stats.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import platform
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from jsonargparse.typing import ClosedUnitInterval, PositiveInt, restricted_number_type

from spiritlm.constants import SAMPLE_RATE
from spiritlm.corpus import text_sources
from spiritlm.corpus.espeak import Espeak, EspeakError, Voice, custom_data_dir, variant_file
from spiritlm.corpus.manifest import Phone, Utterance, Word, write_manifest

MANIFEST_NAME = "manifest.jsonl"
STATS_NAME = "stats.json"
REPORT_NAME = "synth_report.json"
WAV_DIR = "wavs"

#: Lines appended to a speaker's variant to make its whispered version: espeak's own "whisper"
#: variant settings (little voicing, strong breath noise), applied on top of the speaker's
#: formants so that whispered speech keeps the speaker's timbre.
_WHISPER_LINES = "\n// whispered version (spiritlm)\nvoicing 18\nbreath 75 75 50 40 15 10\nbreathw 150 150 200 200 400 400\n"


@dataclass(frozen=True)
class Speaker:
    """A synthetic speaker: an espeak language voice with a variant, plus personal offsets.

    Attributes:
        name: label written to the manifest (``spk0``).
        language: espeak voice (``en-us``: American English, ``en``: British English).
        variant: espeak variant file (``m1``, ``f2``, ...): formants, base pitch, breathiness.
        pitch_offset: added to every style's pitch (espeak 0..100 scale).
        rate_factor: multiplies every style's speaking rate.
    """

    name: str
    language: str
    variant: str
    pitch_offset: int = 0
    rate_factor: float = 1.0

    @property
    def whisper_variant(self) -> str:
        return f"spiritlm-{self.variant}-whisper"


#: Speakers in the order ``num_speakers`` takes them: alternating male and female variants.
SPEAKERS: tuple[Speaker, ...] = (
    Speaker("spk0", "en-us", "m1", 0, 1.00),
    Speaker("spk1", "en-us", "f2", 0, 1.00),
    Speaker("spk2", "en-us", "m3", -6, 0.93),
    Speaker("spk3", "en-us", "f4", 5, 1.07),
    Speaker("spk4", "en", "m7", 4, 1.04),
    Speaker("spk5", "en", "f3", -4, 0.96),
    Speaker("spk6", "en-us", "m2", -3, 1.02),
    Speaker("spk7", "en", "f5", 3, 0.98),
)


@dataclass(frozen=True)
class Style:
    """An expressive style as ranges of espeak parameters, each drawn uniformly per utterance.

    Attributes:
        name: label written to the manifest.
        pitch: base pitch range (espeak 0..100; 50 is the voice's default).
        pitch_range: intonation range (0 = monotone, 50 = default).
        rate: words per minute.
        volume: amplitude (espeak 0..200; 100 is default).
        whisper: use the speaker's whispered variant.
    """

    name: str
    pitch: tuple[int, int]
    pitch_range: tuple[int, int]
    rate: tuple[int, int]
    volume: tuple[int, int]
    whisper: bool = False


#: Measured on six voices (autocorrelation F0 / RMS): happy raises F0 by 30-35 % and RMS by
#: ~40 % over neutral and is ~15 % shorter; sad lowers F0 by 10-30 %, halves RMS and is ~35 %
#: longer; whisper leaves under 5 % of frames voiced.
STYLES: dict[str, Style] = {
    "neutral": Style("neutral", (45, 55), (40, 55), (165, 185), (95, 105)),
    "happy": Style("happy", (68, 78), (80, 95), (195, 215), (115, 125)),
    "sad": Style("sad", (24, 32), (8, 18), (125, 140), (55, 65)),
    "whisper": Style("whisper", (45, 55), (20, 35), (150, 165), (95, 105), whisper=True),
}

#: Style a sentiment sentence gets when its style follows its label.
SENTIMENT_STYLE = {"positive": "happy", "negative": "sad", "neutral": "neutral"}


SampleRate = restricted_number_type("SampleRate", int, [(">=", 8000), ("<=", 48000)], docstring="Hz, 8000-48000")
NumSpeakers = restricted_number_type("NumSpeakers", int, [(">=", 1), ("<=", len(SPEAKERS))], docstring="1 to the number of SPEAKERS")


@dataclass
class SynthConfig:
    """What to synthesise. Every field is part of the output's identity except ``workers``,
    ``chunk_size`` and ``progress``, which only change how fast it is made.

    Attributes:
        num_utts: number of utterances.
        seed: seed of all random choices.
        sample_rate: output sample rate in Hz (espeak renders at 22050 Hz; we resample).
        splits: split name -> fraction (normalised), assigned per source with exact counts.
        mix: text source -> fraction (normalised): ``sentiment``, ``intent``, ``narrative``.
        num_speakers: how many of :data:`SPEAKERS` to use (1..8).
        styles: names of :data:`STYLES` to use.
        sentiment_style_coupling: probability that a sentiment sentence is spoken in its
            label's style (positive -> happy, negative -> sad, neutral -> neutral) rather than a
            uniformly drawn one, so that prosody carries sentiment as in expressive speech.
        lead_silence: (min, max) seconds of silence before the speech.
        sentence_gap: (min, max) seconds of silence between sentences.
        trail_silence: (min, max) seconds of silence after the speech.
        id_prefix: utterance ids are ``<prefix><index, 6 digits>``.
        workers: processes rendering audio (default: ``os.cpu_count()``).
        chunk_size: utterances per task sent to a worker.
        progress: show a tqdm progress bar on stderr.
    """

    # typed as `spiritlm corpus synth`'s flags (spiritlm.cli.flags_from): the parser refuses a bad value
    num_utts: PositiveInt = 200
    seed: int = 0
    sample_rate: SampleRate = SAMPLE_RATE
    splits: dict[str, float] = field(default_factory=lambda: {"train": 0.8, "valid": 0.1, "test": 0.1})
    mix: dict[str, float] = field(default_factory=lambda: {"sentiment": 0.3, "intent": 0.3, "narrative": 0.4})
    num_speakers: NumSpeakers = 4
    styles: tuple[str, ...] = ("neutral", "happy", "sad", "whisper")
    sentiment_style_coupling: ClosedUnitInterval = 0.7
    lead_silence: tuple[float, float] = (0.10, 0.25)
    sentence_gap: tuple[float, float] = (0.25, 0.50)
    trail_silence: tuple[float, float] = (0.10, 0.25)
    id_prefix: str = "utt"
    workers: PositiveInt | None = None
    chunk_size: PositiveInt = 4
    progress: bool = True

    def validate(self) -> None:
        """Raises ValueError naming the first bad field."""
        if not isinstance(self.num_utts, int) or self.num_utts < 1:
            raise ValueError(f"num_utts must be a positive integer, got {self.num_utts!r}")
        if not 8000 <= self.sample_rate <= 48000:
            raise ValueError(f"sample_rate must be in [8000, 48000] Hz, got {self.sample_rate}")
        for name, fractions, allowed in (
            ("splits", self.splits, None),
            ("mix", self.mix, text_sources.SOURCES),
        ):
            if not fractions or any((not isinstance(v, (int, float))) or v < 0 for v in fractions.values()):
                raise ValueError(f"{name} must map names to non-negative fractions, got {fractions!r}")
            if sum(fractions.values()) <= 0:
                raise ValueError(f"{name} fractions sum to zero: {fractions!r}")
            if allowed is not None and set(fractions) - set(allowed):
                raise ValueError(f"unknown {name} entries {sorted(set(fractions) - set(allowed))}; choose from {allowed}")
        if not 1 <= self.num_speakers <= len(SPEAKERS):
            raise ValueError(f"num_speakers must be in [1, {len(SPEAKERS)}], got {self.num_speakers}")
        if not self.styles or set(self.styles) - set(STYLES):
            raise ValueError(f"styles must be a non-empty subset of {sorted(STYLES)}, got {self.styles!r}")
        if not 0.0 <= self.sentiment_style_coupling <= 1.0:
            raise ValueError(f"sentiment_style_coupling must be in [0, 1], got {self.sentiment_style_coupling}")
        for name in ("lead_silence", "sentence_gap", "trail_silence"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi <= 5:
                raise ValueError(f"{name} must be (min, max) seconds with 0 <= min <= max <= 5, got {(lo, hi)}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")

    def identity(self) -> dict:
        """The fields that determine the output (written to stats.json)."""
        d = asdict(self)
        for k in ("workers", "chunk_size", "progress"):
            d.pop(k)
        d["styles"] = list(self.styles)
        d["lead_silence"], d["sentence_gap"], d["trail_silence"] = (
            list(self.lead_silence),
            list(self.sentence_gap),
            list(self.trail_silence),
        )
        return d


@dataclass(frozen=True)
class UttPlan:
    """Everything needed to render one utterance (picklable; sent to workers)."""

    index: int
    id: str
    seed: int
    split: str
    source: str
    speaker: str
    style: str
    item: text_sources.TextItem
    voice: Voice
    lead: float
    gaps: tuple[float, ...]
    trail: float


def utt_rng(seed: int, index: int, purpose: str) -> random.Random:
    """An RNG that depends only on (seed, utterance index, purpose).

    Seeded from a SHA-256 digest, so it is the same in every process and Python version.
    """
    digest = hashlib.sha256(f"spiritlm-corpus/{seed}/{index}/{purpose}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def _exact_counts(total: int, fractions: dict[str, float]) -> dict[str, int]:
    """Splits ``total`` into integer counts proportional to ``fractions`` (largest remainder)."""
    names = list(fractions)
    norm = sum(fractions.values())
    raw = [total * fractions[n] / norm for n in names]
    counts = [int(r) for r in raw]
    order = sorted(range(len(names)), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return dict(zip(names, counts))


def _speaker_table(num_speakers: int) -> dict[str, Speaker]:
    return {s.name: s for s in SPEAKERS[:num_speakers]}


def _draw_voice(rng: random.Random, speaker: Speaker, style: Style) -> Voice:
    variant = speaker.whisper_variant if style.whisper else speaker.variant
    rate = round(rng.randint(*style.rate) * speaker.rate_factor)
    return Voice(
        name=f"{speaker.language}+{variant}",
        rate=min(max(rate, 80), 450),
        volume=rng.randint(*style.volume),
        pitch=min(max(rng.randint(*style.pitch) + speaker.pitch_offset, 0), 100),
        pitch_range=rng.randint(*style.pitch_range),
    )


def _draw_text(cfg: SynthConfig, index: int, source: str, attempt: int) -> text_sources.TextItem:
    """Text of an utterance; ``attempt`` > 0 draws again when the text was already used."""
    return text_sources.generate(source, utt_rng(cfg.seed, index, f"text/{attempt}"))


def plan_corpus(cfg: SynthConfig) -> list[UttPlan]:
    """The deterministic plan of every utterance (see the module docstring)."""
    cfg.validate()
    n = cfg.num_utts
    global_rng = random.Random(int.from_bytes(hashlib.sha256(f"spiritlm-corpus/{cfg.seed}/plan".encode()).digest()[:8], "little"))
    # Sources: exact counts, shuffled.
    sources = [s for s, c in _exact_counts(n, cfg.mix).items() for _ in range(c)]
    global_rng.shuffle(sources)
    # Splits: exact counts within each source, so every split sees every source.
    splits = [""] * n
    for source in sorted(set(sources)):
        idx = [i for i, s in enumerate(sources) if s == source]
        labels = [sp for sp, c in _exact_counts(len(idx), cfg.splits).items() for _ in range(c)]
        global_rng.shuffle(labels)
        for i, sp in zip(idx, labels):
            splits[i] = sp
    # Speakers: balanced (cycled), shuffled.
    speakers_tab = _speaker_table(cfg.num_speakers)
    speakers = [list(speakers_tab)[i % cfg.num_speakers] for i in range(n)]
    global_rng.shuffle(speakers)

    plans, seen = [], set()
    for i in range(n):
        item = _draw_text(cfg, i, sources[i], 0)
        for attempt in range(1, 20):  # avoid repeating a text; give up after a few tries
            if item.text not in seen:
                break
            item = _draw_text(cfg, i, sources[i], attempt)
        seen.add(item.text)
        rng = utt_rng(cfg.seed, i, "voice")
        if item.sentiment and SENTIMENT_STYLE[item.sentiment] in cfg.styles and rng.random() < cfg.sentiment_style_coupling:
            style = SENTIMENT_STYLE[item.sentiment]
        else:
            style = rng.choice(cfg.styles)
        voice = _draw_voice(rng, speakers_tab[speakers[i]], STYLES[style])
        lead = round(rng.uniform(*cfg.lead_silence), 4)
        gaps = tuple(round(rng.uniform(*cfg.sentence_gap), 4) for _ in range(len(item.sentences) - 1))
        trail = round(rng.uniform(*cfg.trail_silence), 4)
        plans.append(
            UttPlan(i, f"{cfg.id_prefix}{i:06d}", cfg.seed, splits[i], sources[i], speakers[i], style, item, voice, lead, gaps, trail)
        )
    return plans


# ------------------------------------------------------------------------------------------------
# Rendering (worker processes)
# ------------------------------------------------------------------------------------------------
_WORKER: dict = {}


def whisper_variants(speakers: Sequence[Speaker] = SPEAKERS) -> dict[str, str]:
    """Variant files (name -> text) of the speakers' whispered voices."""
    return {s.whisper_variant: variant_file(s.variant) + _WHISPER_LINES for s in speakers}


def _init_worker(out_dir: str, sample_rate: int, data_path: str) -> None:
    _WORKER["engine"] = Espeak(data_path=data_path)
    _WORKER["out_dir"] = out_dir
    _WORKER["sample_rate"] = sample_rate


def render_utterance(engine: Espeak, plan: UttPlan, out_dir: str, sample_rate: int) -> tuple[Utterance, int]:
    """Renders, writes ``wavs/<id>.wav`` and returns (manifest entry, number of text retries).

    A text that espeak cannot align (very rare, see :func:`~spiritlm.corpus.espeak.align_events`)
    is replaced by another draw for the same utterance index and label.
    """
    from spiritlm.audio import resample, to_pcm16, write_audio

    item, retries = plan.item, 0
    while True:
        try:
            synths = engine.synthesize_many(
                [(list(w), t) for w, t in item.sentences], plan.voice, rand_seed=utt_rng(plan.seed, plan.index, "noise").getrandbits(31)
            )
            break
        except EspeakError:
            retries += 1
            if retries > 5:
                raise
            item = _draw_text_for_retry(plan, retries)

    sr_in = engine.sample_rate
    parts: list[np.ndarray] = []
    words: list[Word] = []
    phones: list[Phone] = []
    offset = int(round(plan.lead * sr_in))
    parts.append(np.zeros(offset, dtype=np.int16))
    for k, s in enumerate(synths):
        for w in s.words:
            words.append(Word(w.label, (offset + w.start) / sr_in, (offset + w.end) / sr_in))
        for p in s.phones:
            phones.append(Phone(p.label, (offset + p.start) / sr_in, (offset + p.end) / sr_in))
        parts.append(s.samples)
        offset += len(s.samples)
        gap = int(round((plan.gaps[k] if k < len(plan.gaps) else plan.trail) * sr_in))
        parts.append(np.zeros(gap, dtype=np.int16))
        offset += gap
    audio = np.concatenate(parts).astype(np.float64) / 32768.0
    audio = resample(audio, sr_in, sample_rate, dtype=None)  # zero-phase polyphase: times are kept
    pcm = to_pcm16(audio)
    duration = len(pcm) / sample_rate

    rel = f"{WAV_DIR}/{plan.id}.wav"
    write_audio(os.path.join(out_dir, rel), pcm, sample_rate, subtype="PCM_16", format="WAV")

    def t(x: float) -> float:
        return min(round(x, 5), duration)

    utt = Utterance(
        id=plan.id,
        audio=os.path.join(os.path.abspath(out_dir), rel),
        sample_rate=sample_rate,
        duration=duration,
        speaker=plan.speaker,
        style=plan.style,
        text=item.text,
        words=[Word(w.word, t(w.start), t(w.end)) for w in words],
        phones=[Phone(p.phone, t(p.start), t(p.end)) for p in phones],
        sentiment=item.sentiment,
        intent=item.intent,
        split=plan.split,
        extra={"slots": dict(item.slots)} if item.intent else {},
    )
    utt.extra["source"] = plan.source
    return utt, retries


def _draw_text_for_retry(plan: UttPlan, attempt: int) -> text_sources.TextItem:
    rng = utt_rng(plan.seed, plan.index, f"retry/{attempt}")
    if plan.item.sentiment:
        return text_sources.sentiment_item(rng, plan.item.sentiment)
    if plan.item.intent:
        return text_sources.intent_item(rng, plan.item.intent)
    return text_sources.generate(plan.source, rng)


def _render_chunk(plans: list[UttPlan]) -> list[tuple[int, Utterance, int]]:
    engine, out_dir, sr = _WORKER["engine"], _WORKER["out_dir"], _WORKER["sample_rate"]
    out = []
    for p in plans:
        try:
            utt, retries = render_utterance(engine, p, out_dir, sr)
        except Exception as e:  # name the utterance: the pool re-raises in the parent
            raise RuntimeError(f"synthesis of {p.id} ({p.item.text!r}, voice {p.voice}) failed: {e}") from e
        out.append((p.index, utt, retries))
    return out


# ------------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------------
@dataclass
class SynthResult:
    """What :func:`synthesize_corpus` made: paths, deterministic stats and the timing report."""

    out_dir: str
    manifest: str
    utterances: list[Utterance]
    stats: dict
    report: dict


def _check_out_dir(out_dir: str, overwrite: bool) -> None:
    """The output rule (:mod:`spiritlm.atomic`): a corpus in ``out_dir`` is replaced only with ``overwrite``.

    A folder holding other files and no corpus is refused: the new corpus replaces the whole
    folder when complete, which would delete them.
    """
    from spiritlm.atomic import check_parents

    check_parents(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise FileExistsError(f"{out_dir}: is a file, not a folder (--out)")
    existing = [n for n in (MANIFEST_NAME, STATS_NAME, REPORT_NAME) if os.path.exists(os.path.join(out_dir, n))]
    wav_dir = os.path.join(out_dir, WAV_DIR)
    has_wavs = os.path.isdir(wav_dir) and any(os.scandir(wav_dir))
    if (existing or has_wavs) and not overwrite:
        raise FileExistsError(f"{out_dir} already holds a corpus ({MANIFEST_NAME} or {WAV_DIR}/); pass --overwrite true to replace it (--out)")
    if not (existing or has_wavs) and os.path.isdir(out_dir) and any(os.scandir(out_dir)):
        raise FileExistsError(f"{out_dir}: holds other files and no corpus; choose an empty or new folder (--out)")


def corpus_stats(utts: Sequence[Utterance], cfg: SynthConfig, retries: int = 0) -> dict:
    """Deterministic statistics of a synthesised corpus (no timing)."""
    seconds = sum(u.duration for u in utts)
    vocab = Counter(w.word for u in utts for w in u.words)
    phone_inv = Counter(p.phone for u in utts for p in (u.phones or []))

    def count(key) -> dict[str, int]:
        return dict(sorted(Counter(key(u) for u in utts if key(u) is not None).items()))

    return {
        "num_utts": len(utts),
        "seconds": round(seconds, 3),
        "hours": round(seconds / 3600, 5),
        "seconds_per_split": {k: round(sum(u.duration for u in utts if u.split == k), 3) for k in sorted({u.split for u in utts})},
        "splits": count(lambda u: u.split),
        "speakers": count(lambda u: u.speaker),
        "styles": count(lambda u: u.style),
        "sources": count(lambda u: u.extra.get("source")),
        "sentiments": count(lambda u: u.sentiment),
        "intents": count(lambda u: u.intent),
        "num_words": sum(vocab.values()),
        "vocab_size": len(vocab),
        "num_phones": sum(phone_inv.values()),
        "phone_inventory_size": len(phone_inv),
        "text_retries": retries,
        "config": cfg.identity(),
    }


def synthesize_corpus(cfg: SynthConfig, out_dir: str, overwrite: bool = False) -> SynthResult:
    """Plans, renders and writes a corpus into ``out_dir`` (see the module docstring).

    Args:
        cfg: what to make.
        out_dir: output folder; created if missing.
        overwrite: replace an existing corpus in ``out_dir`` (its manifest, stats and ``wavs/``).

    Returns:
        :class:`SynthResult`.
    """
    t0 = time.perf_counter()
    cfg.validate()
    from spiritlm.atomic import atomic_dir

    final_dir = os.path.abspath(out_dir)
    _check_out_dir(final_dir, overwrite)
    # built under a temporary name and renamed when complete: a killed run leaves the old corpus (or nothing)
    with atomic_dir(final_dir, overwrite=True) as tmp:
        result = _synthesize_into(cfg, str(tmp), t0)
    for u in result.utterances:
        u.audio = os.path.join(final_dir, os.path.relpath(u.audio, str(tmp)))
    return SynthResult(final_dir, os.path.join(final_dir, MANIFEST_NAME), result.utterances, result.stats, result.report)


def _synthesize_into(cfg: SynthConfig, out_dir: str, t0: float) -> SynthResult:
    os.makedirs(os.path.join(out_dir, WAV_DIR), exist_ok=True)
    plans = plan_corpus(cfg)
    data_path = custom_data_dir(whisper_variants())
    workers = max(1, min(cfg.workers or os.cpu_count() or 1, len(plans)))
    chunks = [plans[i : i + cfg.chunk_size] for i in range(0, len(plans), cfg.chunk_size)]

    results: dict[int, Utterance] = {}
    retries = 0
    # forkserver: workers start from a clean single-threaded process even if the caller has
    # threads (tqdm, torch); each worker then forks one child per utterance.
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    if "forkserver" in methods:
        # Import the heavy modules once in the fork server (scipy.signal alone takes ~1.5 s)
        # instead of in every worker of every pool; no effect once the server runs.
        ctx.set_forkserver_preload(["spiritlm.corpus.synth", "spiritlm.audio", "scipy.signal", "soundfile"])
    from tqdm import tqdm

    with ctx.Pool(workers, initializer=_init_worker, initargs=(out_dir, cfg.sample_rate, data_path)) as pool:
        with tqdm(total=len(plans), unit="utt", desc="synth", disable=not cfg.progress, file=sys.stderr) as bar:
            for chunk_result in pool.imap_unordered(_render_chunk, chunks):
                for index, utt, r in chunk_result:
                    results[index] = utt
                    retries += r
                bar.update(len(chunk_result))
    utts = [results[i] for i in range(len(plans))]
    manifest = os.path.join(out_dir, MANIFEST_NAME)
    write_manifest(manifest, utts)
    stats = corpus_stats(utts, cfg, retries)
    with open(os.path.join(out_dir, STATS_NAME), "w", encoding="utf-8") as f:
        json.dump(stats, f, indent=2, sort_keys=False)
        f.write("\n")
    wall = time.perf_counter() - t0
    from spiritlm.corpus.espeak import default_paths, library_version

    report = {
        "wall_seconds": round(wall, 3),
        "audio_seconds": stats["seconds"],
        "throughput_x_realtime": round(stats["seconds"] / wall, 2) if wall > 0 else None,
        "utterances_per_second": round(len(utts) / wall, 2) if wall > 0 else None,
        "workers": workers,
        "chunk_size": cfg.chunk_size,
        "espeak_library": default_paths()[0],
        "espeak_version": library_version(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
    }
    with open(os.path.join(out_dir, REPORT_NAME), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    return SynthResult(out_dir, manifest, utts, stats, report)
