"""Training the judges: the CTC ASR (:func:`train_asr`) and all judges on a manifest (:func:`train_judges`).

``train_judges`` writes ``OUT/{asr,text_sentiment,speech_sentiment}/`` (:mod:`spiritlm.judges.models`'
folders) and ``OUT/judges_metrics.json``: each judge's score on the manifest's test split.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from spiritlm.atomic import atomic_dir
from spiritlm.corpus.ctc import AsrConfig, CtcAsr, LogMel
from spiritlm.judges import JUDGE_DIRS, METRICS_NAME, load_judges_metrics
from spiritlm.judges.models import (
    AsrJudge,
    SpeechSentimentConfig,
    SpeechSentimentJudge,
    TextSentimentConfig,
    TextSentimentJudge,
    _min_wav,
    _write_json,
    normalize_transcript,
)
from spiritlm.tensors import pad_batch

logger = logging.getLogger(__name__)


@dataclass
class AsrTrainConfig:
    """Training of the CTC ASR judge.

    Attributes:
        steps: optimizer steps.
        batch_size: utterances per batch (batches group utterances of similar length).
        lr: peak learning rate of the one-cycle schedule (AdamW).
        weight_decay: AdamW weight decay.
        freq_masks: SpecAugment frequency masks per utterance (width up to ``freq_mask_width`` bands).
        freq_mask_width: see ``freq_masks``.
        time_masks: SpecAugment time masks per utterance (width up to ``time_mask_width`` frames).
        time_mask_width: see ``time_masks`` (frames at 100 Hz).
        eval_every: steps between validation CER measurements (0: only at the end).
    """

    steps: int = 800
    batch_size: int = 8
    lr: float = 3e-3
    weight_decay: float = 1e-2
    freq_masks: int = 1
    freq_mask_width: int = 12
    time_masks: int = 1
    time_mask_width: int = 20
    eval_every: int = 0


def _encode_text(text: str, alphabet: str) -> list[int]:
    index = {c: i + 1 for i, c in enumerate(alphabet)}
    return [index[c] for c in normalize_transcript(text, alphabet)]


def _cer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    from spiritlm.edit_distance import error_rate

    return error_rate(refs, hyps, "char")


def train_asr(
    train: Sequence[tuple[np.ndarray, str]],
    cfg: AsrConfig | None = None,
    tcfg: AsrTrainConfig | None = None,
    *,
    valid: Sequence[tuple[np.ndarray, str]] = (),
    seed: int = 0,
    progress: bool = True,
) -> tuple[AsrJudge, list[dict]]:
    """Trains the CTC ASR judge on ``(16 kHz waveform, transcript)`` pairs.

    Returns ``(judge, history)``: history rows ``{"step", "loss", "valid_cer"?}``.
    """
    from tqdm import tqdm

    cfg, tcfg = cfg or AsrConfig(), tcfg or AsrTrainConfig()
    if not train:
        raise ValueError("train_asr: no training utterances")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    feat = LogMel(cfg.n_mels)
    with torch.no_grad():  # features once: the front end is fixed
        feats = [feat(torch.as_tensor(_min_wav(w))[None], torch.tensor([len(_min_wav(w))]))[0][0] for w, _ in train]
    targets = [_encode_text(t, cfg.alphabet) for _, t in train]
    keep = [i for i, t in enumerate(targets) if t and len(t) <= (feats[i].shape[0] + 1) // 2]
    if not keep:
        raise ValueError("train_asr: no utterance has a transcript that fits its frames")
    model = CtcAsr(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=tcfg.lr, total_steps=tcfg.steps, pct_start=0.1)
    ctc = nn.CTCLoss(blank=0, zero_infinity=True)
    import torchaudio

    fmask = torchaudio.transforms.FrequencyMasking(tcfg.freq_mask_width, iid_masks=True)
    tmask = torchaudio.transforms.TimeMasking(tcfg.time_mask_width, iid_masks=True)
    keep.sort(key=lambda i: feats[i].shape[0])
    batches = [keep[b : b + tcfg.batch_size] for b in range(0, len(keep), tcfg.batch_size)]
    history: list[dict] = []
    queue: list[list[int]] = []
    judge = AsrJudge(model)
    model.train()
    bar = tqdm(range(tcfg.steps), desc="asr judge", disable=not progress, mininterval=5)
    for step in bar:
        if not queue:
            queue = list(batches)
            rng.shuffle(queue)
        idx = queue.pop()
        x, lens = pad_batch([feats[i] for i in idx])  # (B, frames, n_mels)
        x = x.transpose(1, 2)  # SpecAugment works on (B, freq, time)
        for _ in range(tcfg.freq_masks):
            x = fmask(x)
        for _ in range(tcfg.time_masks):
            x = tmask(x)
        x = x.transpose(1, 2)
        lp, out_lens = model(x, lens)
        tgt = torch.tensor([c for i in idx for c in targets[i]])
        tgt_lens = torch.tensor([len(targets[i]) for i in idx])
        loss = ctc(lp.transpose(0, 1), tgt, out_lens, tgt_lens)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        sched.step()
        row: dict = {"step": step + 1, "loss": round(loss.item(), 4)}
        last = step + 1 == tcfg.steps
        if valid and ((tcfg.eval_every and (step + 1) % tcfg.eval_every == 0) or last):
            model.eval()
            row["valid_cer"] = round(_cer([normalize_transcript(t, cfg.alphabet) for _, t in valid], judge.transcribe([w for w, _ in valid])), 4)
            model.train()
            logger.info(f"[asr judge] step {step + 1}: loss {row['loss']:.3f} valid CER {row['valid_cer']:.3f}")
        if step % 50 == 0:
            bar.set_postfix(loss=f"{row['loss']:.3f}")
        history.append(row)
    model.eval()
    return judge, history


@dataclass
class JudgesConfig:
    """What :func:`train_judges` trains.

    Attributes:
        asr: the ASR architecture.
        asr_train: its training.
        text: the text sentiment judge.
        speech: the speech sentiment judge.
        max_asr_train: cap on ASR training utterances (0: all of the train split).
    """

    asr: AsrConfig = field(default_factory=AsrConfig)
    asr_train: AsrTrainConfig = field(default_factory=AsrTrainConfig)
    text: TextSentimentConfig = field(default_factory=TextSentimentConfig)
    speech: SpeechSentimentConfig = field(default_factory=SpeechSentimentConfig)
    max_asr_train: int = 0


def vocode_utterances(vocoder: Any, utts: Sequence, units: dict[str, dict]) -> tuple[list, list[np.ndarray]]:
    """The vocoder's resynthesis of manifest utterances from their units rows (frame-rate dicts, each
    utterance's own speaker when the vocoder knows its name, else row 0); utterances without units
    or refused by the vocoder are left out. Returns ``(kept utterances, waveforms)``."""
    from spiritlm.generation.outputs import vocode_many

    names = list(getattr(vocoder, "speakers", None) or [])
    have = [(u, units.get(u.id) or units.get(u.audio)) for u in utts]
    have = [(u, row) for u, row in have if row is not None]
    streams = [{k: row[k] for k in ("hubert", "pitch", "style") if row.get(k)} for _, row in have]
    wavs, _ = vocode_many(vocoder, streams, [u.speaker if u.speaker in names else 0 for u, _ in have])
    return [have[i][0] for i in sorted(wavs)], [wavs[i] for i in sorted(wavs)]


def _accuracy(gold: Sequence[str], pred: Sequence[str]) -> float:
    return float(np.mean([g == p for g, p in zip(gold, pred)])) if gold else float("nan")


def _majority_rate(train_labels: Sequence[str], test_labels: Sequence[str]) -> float:
    """Accuracy on ``test_labels`` of always answering the commonest training label."""
    from collections import Counter

    if not train_labels or not test_labels:
        return float("nan")
    top = Counter(train_labels).most_common(1)[0][0]
    return _accuracy(list(test_labels), [top] * len(test_labels))


def train_judges(
    manifest: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    cfg: JudgesConfig | None = None,
    which: Sequence[str] = ("asr", "text-sentiment", "speech-sentiment"),
    vocoder: Any = None,
    units: dict[str, dict] | None = None,
    vocoded_fraction: float = 0.0,
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """Trains the judges on the manifest's ``train`` split and scores them on its ``test`` split.

    The rule of every trainer: a judge of ``which`` already in ``out_dir`` (its ``judge.json``) is
    refused unless ``overwrite``, before any work. Each judge folder is built under a temporary
    name and renamed when whole (:func:`spiritlm.atomic.atomic_dir`), so an interrupted run leaves
    finished judges and no half-made one: rerun it with ``which`` the judges still missing.

    With a ``vocoder`` and the corpus' ``units`` (Meta's units rows by id), the ASR judge is also
    scored on the vocoder's resynthesis of the test utterances (``vocoded_cer``: what the judge
    makes of vocoder speech, before any LM output reaches it), and ``vocoded_fraction`` of the
    train utterances are added a second time as resyntheses (augmentation that makes the judge
    hear the vocoder's artefacts as it hears espeak's).

    The ASR trains on every train utterance with a transcript; the sentiment judges on the train
    utterances that carry a ``sentiment`` label. Unreadable audio is skipped and counted.

    Writes ``out_dir/{asr,text_sentiment,speech_sentiment}/`` and ``out_dir/judges_metrics.json``:
    per judge its test score (``cer`` for the ASR; ``accuracy`` and the majority-class rate
    ``chance`` for the classifiers), the number of train/test items and the seconds it took.

    Returns:
        The metrics dict written to ``judges_metrics.json``.

    Raises:
        spiritlm.errors.UserError: the manifest has no train or no test split, or no sentiment
            labels when a sentiment judge is asked for.
    """
    from spiritlm.corpus import read_manifest
    from spiritlm.errors import UserError
    from spiritlm.tokenizers.utils import load_audio_batch

    cfg = cfg or JudgesConfig()
    unknown = set(which) - set(JUDGE_DIRS)
    if unknown:
        raise UserError(f"unknown judges {sorted(unknown)} (choose from {', '.join(JUDGE_DIRS)})")
    done = [j for j in which if (Path(out_dir) / JUDGE_DIRS[j] / "judge.json").is_file()]
    if done and not overwrite:
        raise UserError(f"{out_dir}: already holds trained {', '.join(done)} judge(s); pass --overwrite true to retrain them, "
                        "or --which the others (--out)")
    utts = read_manifest(manifest)
    train = [u for u in utts if u.split == "train"]
    test = [u for u in utts if u.split == "test"]
    valid = [u for u in utts if u.split == "valid"]
    if not train or not test:
        raise UserError(f"{manifest}: judges need a 'train' and a 'test' split (found {len(train)} train, {len(test)} test lines) (--manifest)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, Any] = {"manifest": str(manifest), "seed": seed, "config": asdict(cfg)}
    errors: list[dict] = []
    audio_cache: dict[str, np.ndarray] = {}

    def wavs_of(items):
        todo = [u for u in items if u.id not in audio_cache]
        kept, wavs = load_audio_batch(todo, errors)
        audio_cache.update({u.id: w for u, w in zip(kept, wavs)})
        ok = [u for u in items if u.id in audio_cache]
        return ok, [audio_cache[u.id] for u in ok]

    if "text-sentiment" in which or "speech-sentiment" in which:
        s_train = [u for u in train if u.sentiment]
        s_test = [u for u in test if u.sentiment]
        if not s_train or not s_test:
            raise UserError(f"{manifest}: sentiment judges need 'sentiment' labels in the train and test splits (found {len(s_train)}, {len(s_test)}) (--manifest)")
    if "text-sentiment" in which:
        t0 = time.time()
        judge = TextSentimentJudge.fit([u.text for u in s_train], [u.sentiment for u in s_train], cfg.text, seed)
        acc = _accuracy([u.sentiment for u in s_test], judge.predict([u.text for u in s_test]))
        m = {"accuracy": acc, "chance": _majority_rate([u.sentiment for u in s_train], [u.sentiment for u in s_test]),
             "n_train": len(s_train), "n_test": len(s_test), "seconds": round(time.time() - t0, 2)}
        with atomic_dir(out / JUDGE_DIRS["text-sentiment"], overwrite=True) as tmp:
            judge.save(tmp, m)
        metrics["text-sentiment"] = m
        logger.info(f"[judges] text sentiment: test accuracy {acc:.3f} (majority class {m['chance']:.3f}, n={len(s_test)})")
    if "speech-sentiment" in which:
        t0 = time.time()
        tr, tr_w = wavs_of(s_train)
        te, te_w = wavs_of(s_test)
        judge = SpeechSentimentJudge.fit(tr_w, [u.sentiment for u in tr], cfg.speech, seed)
        acc = _accuracy([u.sentiment for u in te], judge.predict(te_w))
        m = {"accuracy": acc, "chance": _majority_rate([u.sentiment for u in tr], [u.sentiment for u in te]),
             "n_train": len(tr), "n_test": len(te), "seconds": round(time.time() - t0, 2)}
        if vocoder is not None and units:
            vt, vt_w = vocode_utterances(vocoder, te, units)
            m["vocoded_accuracy"] = _accuracy([u.sentiment for u in vt], judge.predict(vt_w)) if vt else None
            m["n_test_vocoded"] = len(vt)
        with atomic_dir(out / JUDGE_DIRS["speech-sentiment"], overwrite=True) as tmp:
            judge.save(tmp, m)
        metrics["speech-sentiment"] = m
        logger.info(f"[judges] speech sentiment: test accuracy {acc:.3f} (majority class {m['chance']:.3f}, n={len(te)})")
    if "asr" in which:
        t0 = time.time()
        pool = [u for u in train if u.text.strip()]
        if cfg.max_asr_train and len(pool) > cfg.max_asr_train:
            pool = random.Random(seed).sample(pool, cfg.max_asr_train)
        tr, tr_w = wavs_of(pool)
        va, va_w = wavs_of(valid[:64])
        pairs = list(zip(tr_w, [u.text for u in tr]))
        n_vocoded = 0
        if vocoder is not None and units and vocoded_fraction > 0:
            chosen = [u for u in tr if random.Random(f"{seed}:{u.id}").random() < vocoded_fraction]
            voc_utts, voc_wavs = vocode_utterances(vocoder, chosen, units)
            pairs += list(zip(voc_wavs, [u.text for u in voc_utts]))
            n_vocoded = len(voc_utts)
        judge, history = train_asr(
            pairs, cfg.asr, cfg.asr_train, valid=list(zip(va_w, [u.text for u in va])), seed=seed, progress=progress,
        )
        te, te_w = wavs_of(test)
        hyps = judge.transcribe(te_w)
        refs = [normalize_transcript(u.text, cfg.asr.alphabet) for u in te]
        from spiritlm.edit_distance import error_rate

        m = {"cer": _cer(refs, hyps), "wer": error_rate(refs, hyps, "word"),
             "n_train": len(tr), "n_train_vocoded": n_vocoded, "n_test": len(te), "steps": cfg.asr_train.steps,
             "seconds": round(time.time() - t0, 1), "final_loss": history[-1]["loss"], "valid_cer": history[-1].get("valid_cer")}
        if vocoder is not None and units:
            vt, vt_w = vocode_utterances(vocoder, te, units)
            m["vocoded_cer"] = _cer([normalize_transcript(u.text, cfg.asr.alphabet) for u in vt], judge.transcribe(vt_w))
            m["n_test_vocoded"] = len(vt)
        with atomic_dir(out / JUDGE_DIRS["asr"], overwrite=True) as tmp:
            judge.save(tmp, m)
            _write_json(tmp / "history.json", history)
        metrics["asr"] = m
        vc = f", on vocoder speech {m['vocoded_cer']:.3f}" if m.get("vocoded_cer") is not None else ""
        logger.info(f"[judges] asr: test CER {m['cer']:.3f} WER {m['wer']:.3f}{vc} (n={len(te)}, {m['seconds']:.0f} s)")
    metrics["skipped_audio"] = errors
    metrics = _nan_to_none(metrics)
    previous = load_judges_metrics(out)
    if previous.get("manifest") == metrics["manifest"]:
        # retraining some judges of a folder keeps the scores of the others (same manifest only)
        metrics = {**{k: v for k, v in previous.items() if k in JUDGE_DIRS}, **metrics}
    _write_json(out / METRICS_NAME, metrics)
    return metrics


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    return obj
