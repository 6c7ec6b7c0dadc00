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
from spiritlm.trainer import Recipe, Schedule, config_from_dict
from spiritlm.corpus.ctc import AsrConfig, CtcAsr, LogMel
from spiritlm.judges import JUDGE_DIRS, METRICS_NAME, load_judges_metrics, read_judges_recipe
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
    """Trains the CTC ASR judge on ``(16 kHz waveform, transcript)`` pairs (:class:`AsrRecipe`).

    Returns ``(judge, history)``: history rows ``{"step", "loss", "valid_cer"?}``.
    """
    recipe = AsrRecipe(train, cfg or AsrConfig(), tcfg or AsrTrainConfig(), valid=valid, seed=seed, progress=progress)
    recipe.run()
    return recipe.judge, recipe.history


class AsrRecipe(Recipe):
    """The CTC ASR judge's training on the trainer skeleton (:class:`spiritlm.trainer.Recipe`):
    log-mel features computed once, batches of similar lengths in a shuffled order per pass,
    SpecAugment masks, AdamW with a one-cycle schedule and gradient clipping at 5; a history row
    per step, the validation CER every ``eval_every`` steps and at the last (no checkpoints: a
    judge trains in minutes and its folder appears whole or not at all)."""

    name = "asr judge"

    def __init__(self, train: Sequence[tuple[np.ndarray, str]], cfg: AsrConfig, tcfg: AsrTrainConfig, *,
                 valid: Sequence[tuple[np.ndarray, str]] = (), seed: int = 0, progress: bool = True) -> None:
        super().__init__()
        self.train_pairs, self.cfg, self.tcfg, self.valid, self.seed, self.progress = train, cfg, tcfg, valid, seed, progress

    def setup(self) -> None:
        cfg, tcfg, train = self.cfg, self.tcfg, self.train_pairs
        if not train:
            raise ValueError("train_asr: no training utterances")
        torch.manual_seed(self.seed)
        self.rng = random.Random(self.seed)
        feat = LogMel(cfg.n_mels)
        with torch.no_grad():  # features once: the front end is fixed
            self.feats = feats = [feat(torch.as_tensor(_min_wav(w))[None], torch.tensor([len(_min_wav(w))]))[0][0] for w, _ in train]
        self.targets = targets = [_encode_text(t, cfg.alphabet) for _, t in train]
        keep = [i for i, t in enumerate(targets) if t and len(t) <= (feats[i].shape[0] + 1) // 2]
        if not keep:
            raise ValueError("train_asr: no utterance has a transcript that fits its frames")
        self.model = model = CtcAsr(cfg)
        self.opt = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.OneCycleLR(self.opt, max_lr=tcfg.lr, total_steps=tcfg.steps, pct_start=0.1)
        self.ctc = nn.CTCLoss(blank=0, zero_infinity=True)
        import torchaudio

        self.fmask = torchaudio.transforms.FrequencyMasking(tcfg.freq_mask_width, iid_masks=True)
        self.tmask = torchaudio.transforms.TimeMasking(tcfg.time_mask_width, iid_masks=True)
        keep.sort(key=lambda i: feats[i].shape[0])
        self.batches = [keep[b : b + tcfg.batch_size] for b in range(0, len(keep), tcfg.batch_size)]
        self.history: list[dict] = []
        self.queue: list[list[int]] = []
        self.judge = AsrJudge(model)
        self.schedule = Schedule(max_steps=tcfg.steps, end=tcfg.steps, log_every=1, val_every=tcfg.eval_every, save_at_end=False)

    def on_train_start(self) -> None:
        self.model.train()

    def train_step(self) -> None:
        """One batch: SpecAugment, the CTC loss, a clipped AdamW step."""
        cfg, tcfg, feats, targets = self.cfg, self.tcfg, self.feats, self.targets
        if not self.queue:
            self.queue = list(self.batches)
            self.rng.shuffle(self.queue)
        idx = self.queue.pop()
        x, lens = pad_batch([feats[i] for i in idx])  # (B, frames, n_mels)
        x = x.transpose(1, 2)  # SpecAugment works on (B, freq, time)
        for _ in range(tcfg.freq_masks):
            x = self.fmask(x)
        for _ in range(tcfg.time_masks):
            x = self.tmask(x)
        x = x.transpose(1, 2)
        lp, out_lens = self.model(x, lens)
        tgt = torch.tensor([c for i in idx for c in targets[i]])
        tgt_lens = torch.tensor([len(targets[i]) for i in idx])
        loss = self.ctc(lp.transpose(0, 1), tgt, out_lens, tgt_lens)
        self.opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 5.0)
        self.opt.step()
        self.sched.step()
        self.loss = loss.item()

    def log_train(self) -> None:
        """The step's history row (every step)."""
        row: dict = {"step": self.step, "loss": round(self.loss, 4)}
        if self.bar is not None and (self.step - 1) % 50 == 0:
            self.bar.set_postfix(loss=f"{row['loss']:.3f}")
        self.history.append(row)

    def validate(self) -> None:
        """The validation CER, into this step's history row."""
        if not self.valid:
            return
        row, alphabet = self.history[-1], self.cfg.alphabet
        self.model.eval()
        row["valid_cer"] = round(_cer([normalize_transcript(t, alphabet) for _, t in self.valid], self.judge.transcribe([w for w, _ in self.valid])), 4)
        self.model.train()
        self.log(f"step {self.step}: loss {row['loss']:.3f} valid CER {row['valid_cer']:.3f}")

    def finish(self) -> None:
        self.model.eval()


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


def judges_preset(where: str = "tiny") -> JudgesConfig:
    """The judges' recipe ``where`` (:func:`spiritlm.judges.read_judges_recipe`: ``tiny``,
    ``judges-tiny`` or a YAML file of :class:`JudgesConfig`'s fields; the fields it leaves out keep
    their defaults).

    >>> cfg = judges_preset("tiny")
    >>> cfg.asr.d_model, cfg.asr_train.steps, cfg.text.ngram_max
    (96, 800, 2)

    Raises:
        spiritlm.errors.UserError: no such recipe, not a YAML mapping, or a key that is not a
            field (naming the file and the key).
    """
    path, values = read_judges_recipe(where)
    return config_from_dict(JudgesConfig(), values, f"{path} (--preset)")


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
    training = JudgesTraining(manifest, out_dir, seed=seed, cfg=cfg or JudgesConfig(), which=which, vocoder=vocoder, units=units,
                              vocoded_fraction=vocoded_fraction, progress=progress, overwrite=overwrite)
    return training.run()


class JudgesTraining:
    """One :func:`train_judges` run, phase by phase: ``setup`` (the refusal rule, the splits), one
    method per judge (``text_sentiment``, ``speech_sentiment``, ``asr``: each trains, scores and
    publishes its folder), ``finish`` (``judges_metrics.json``)."""

    def __init__(self, manifest, out_dir, *, seed: int, cfg: JudgesConfig, which: Sequence[str], vocoder: Any, units: dict[str, dict] | None,
                 vocoded_fraction: float, progress: bool, overwrite: bool) -> None:
        self.manifest, self.out, self.seed, self.cfg, self.which = manifest, Path(out_dir), seed, cfg, which
        self.vocoder, self.units, self.vocoded_fraction = vocoder, units, vocoded_fraction
        self.progress, self.overwrite = progress, overwrite
        self.errors: list[dict] = []
        self.audio_cache: dict[str, np.ndarray] = {}

    def run(self) -> dict:
        self.setup()
        if "text-sentiment" in self.which:
            self.text_sentiment()
        if "speech-sentiment" in self.which:
            self.speech_sentiment()
        if "asr" in self.which:
            self.asr()
        return self.finish()

    def setup(self) -> None:
        """Refuses judges already trained (unless ``overwrite``), reads the splits and checks them."""
        from spiritlm.corpus import read_manifest
        from spiritlm.errors import UserError

        manifest, out, which = self.manifest, self.out, self.which
        unknown = set(which) - set(JUDGE_DIRS)
        if unknown:
            raise UserError(f"unknown judges {sorted(unknown)} (choose from {', '.join(JUDGE_DIRS)})")
        done = [j for j in which if (out / JUDGE_DIRS[j] / "judge.json").is_file()]
        if done and not self.overwrite:
            raise UserError(f"{out}: already holds trained {', '.join(done)} judge(s); pass --overwrite true to retrain them, "
                            "or --which the others (--out)")
        utts = read_manifest(manifest)
        self.train = [u for u in utts if u.split == "train"]
        self.test = [u for u in utts if u.split == "test"]
        self.valid = [u for u in utts if u.split == "valid"]
        if not self.train or not self.test:
            raise UserError(f"{manifest}: judges need a 'train' and a 'test' split (found {len(self.train)} train, {len(self.test)} "
                            "test lines) (--manifest)")
        out.mkdir(parents=True, exist_ok=True)
        self.metrics: dict[str, Any] = {"manifest": str(manifest), "seed": self.seed, "config": asdict(self.cfg)}
        if "text-sentiment" in which or "speech-sentiment" in which:
            self.s_train = [u for u in self.train if u.sentiment]
            self.s_test = [u for u in self.test if u.sentiment]
            if not self.s_train or not self.s_test:
                raise UserError(f"{manifest}: sentiment judges need 'sentiment' labels in the train and test splits (found "
                                f"{len(self.s_train)}, {len(self.s_test)}) (--manifest)")

    def wavs_of(self, items) -> tuple[list, list[np.ndarray]]:
        """The readable ones of ``items`` and their audio (read once per run; unreadable ones counted in ``skipped_audio``)."""
        from spiritlm.tokenizers.utils import load_audio_batch

        todo = [u for u in items if u.id not in self.audio_cache]
        kept, wavs = load_audio_batch(todo, self.errors)
        self.audio_cache.update({u.id: w for u, w in zip(kept, wavs)})
        ok = [u for u in items if u.id in self.audio_cache]
        return ok, [self.audio_cache[u.id] for u in ok]

    def _publish(self, which: str, judge: Any, m: dict, history: list[dict] | None = None) -> None:
        """The judge's folder, built under a temporary name and renamed when whole."""
        with atomic_dir(self.out / JUDGE_DIRS[which], overwrite=True) as tmp:
            judge.save(tmp, m)
            if history is not None:
                _write_json(tmp / "history.json", history)
        self.metrics[which] = m

    def text_sentiment(self) -> None:
        s_train, s_test, t0 = self.s_train, self.s_test, time.time()
        judge = TextSentimentJudge.fit([u.text for u in s_train], [u.sentiment for u in s_train], self.cfg.text, self.seed)
        acc = _accuracy([u.sentiment for u in s_test], judge.predict([u.text for u in s_test]))
        m = {"accuracy": acc, "chance": _majority_rate([u.sentiment for u in s_train], [u.sentiment for u in s_test]),
             "n_train": len(s_train), "n_test": len(s_test), "seconds": round(time.time() - t0, 2)}
        self._publish("text-sentiment", judge, m)
        logger.info(f"[judges] text sentiment: test accuracy {acc:.3f} (majority class {m['chance']:.3f}, n={len(s_test)})")

    def speech_sentiment(self) -> None:
        t0 = time.time()
        tr, tr_w = self.wavs_of(self.s_train)
        te, te_w = self.wavs_of(self.s_test)
        judge = SpeechSentimentJudge.fit(tr_w, [u.sentiment for u in tr], self.cfg.speech, self.seed)
        acc = _accuracy([u.sentiment for u in te], judge.predict(te_w))
        m = {"accuracy": acc, "chance": _majority_rate([u.sentiment for u in tr], [u.sentiment for u in te]),
             "n_train": len(tr), "n_test": len(te), "seconds": round(time.time() - t0, 2)}
        if self.vocoder is not None and self.units:
            vt, vt_w = vocode_utterances(self.vocoder, te, self.units)
            m["vocoded_accuracy"] = _accuracy([u.sentiment for u in vt], judge.predict(vt_w)) if vt else None
            m["n_test_vocoded"] = len(vt)
        self._publish("speech-sentiment", judge, m)
        logger.info(f"[judges] speech sentiment: test accuracy {acc:.3f} (majority class {m['chance']:.3f}, n={len(te)})")

    def _asr_pairs(self) -> tuple[list, list, int, list]:
        """``(train utterances, (waveform, transcript) pairs, how many of them are vocoder resyntheses,
        validation pairs)``."""
        cfg, seed, vocoder, units = self.cfg, self.seed, self.vocoder, self.units
        pool = [u for u in self.train if u.text.strip()]
        if cfg.max_asr_train and len(pool) > cfg.max_asr_train:
            pool = random.Random(seed).sample(pool, cfg.max_asr_train)
        tr, tr_w = self.wavs_of(pool)
        va, va_w = self.wavs_of(self.valid[:64])
        pairs = list(zip(tr_w, [u.text for u in tr]))
        n_vocoded = 0
        if vocoder is not None and units and self.vocoded_fraction > 0:
            chosen = [u for u in tr if random.Random(f"{seed}:{u.id}").random() < self.vocoded_fraction]
            voc_utts, voc_wavs = vocode_utterances(vocoder, chosen, units)
            pairs += list(zip(voc_wavs, [u.text for u in voc_utts]))
            n_vocoded = len(voc_utts)
        return tr, pairs, n_vocoded, list(zip(va_w, [u.text for u in va]))

    def asr(self) -> None:
        """The CTC ASR (:class:`AsrRecipe`) on the train split (+ resyntheses); its CER/WER on the test split."""
        from spiritlm.edit_distance import error_rate

        cfg, t0 = self.cfg, time.time()
        tr, pairs, n_vocoded, valid = self._asr_pairs()
        judge, history = train_asr(pairs, cfg.asr, cfg.asr_train, valid=valid, seed=self.seed, progress=self.progress)
        te, te_w = self.wavs_of(self.test)
        hyps = judge.transcribe(te_w)
        refs = [normalize_transcript(u.text, cfg.asr.alphabet) for u in te]
        m = {"cer": _cer(refs, hyps), "wer": error_rate(refs, hyps, "word"),
             "n_train": len(tr), "n_train_vocoded": n_vocoded, "n_test": len(te), "steps": cfg.asr_train.steps,
             "seconds": round(time.time() - t0, 1), "final_loss": history[-1]["loss"], "valid_cer": history[-1].get("valid_cer")}
        if self.vocoder is not None and self.units:
            vt, vt_w = vocode_utterances(self.vocoder, te, self.units)
            m["vocoded_cer"] = _cer([normalize_transcript(u.text, cfg.asr.alphabet) for u in vt], judge.transcribe(vt_w))
            m["n_test_vocoded"] = len(vt)
        self._publish("asr", judge, m, history)
        vc = f", on vocoder speech {m['vocoded_cer']:.3f}" if m.get("vocoded_cer") is not None else ""
        logger.info(f"[judges] asr: test CER {m['cer']:.3f} WER {m['wer']:.3f}{vc} (n={len(te)}, {m['seconds']:.0f} s)")

    def finish(self) -> dict:
        """``judges_metrics.json``: this run's judges, and the other judges' scores of an earlier run on the same manifest."""
        self.metrics["skipped_audio"] = self.errors
        metrics = _nan_to_none(self.metrics)
        previous = load_judges_metrics(self.out)
        if previous.get("manifest") == metrics["manifest"]:
            # retraining some judges of a folder keeps the scores of the others (same manifest only)
            metrics = {**{k: v for k, v in previous.items() if k in JUDGE_DIRS}, **metrics}
        _write_json(self.out / METRICS_NAME, metrics)
        return metrics


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    return obj
