"""Training the speech tokenizer from a manifest, with the metrics of each stream.

Presets (YAML recipes in ``recipes/configs/tokenizer-{tiny,base,expressive}.yaml``, :func:`make_preset`):

* ``tiny`` (embedded, CPU): MFCC units (100 clusters, no CMVN), pitch VQ-VAE (64 codes, small), CNN
  style encoder trained on the corpus' style labels + k-means (16 clusters). A few minutes on
  ~200 synthetic utterances; the pitch and style steps follow the corpus (:func:`plan_steps`:
  20 passes over the training frames, at most 800 / 300 steps, at least 600 / 50).
* ``base``: HuBERT layer 11 features + 500-unit k-means (Spirit LM Base's units).
* ``expressive``: ``base`` + pitch VQ-VAE (64 codes) + style (w2v2 encoder when given, else the
  CNN) with 100 clusters.

Streaming: unit features, F0 tracks, the style CNN's log-mels and style embeddings go to
memory-mapped shards in a work folder (:mod:`spiritlm.tokenizers.shards`), a shard of
:data:`SHARD_ITEMS` utterances at a time; the k-means stages copy a bounded random sample of
frames to disk and fit it with ``MiniBatchKMeans.partial_fit`` a chunk at a time; the pitch
VQ-VAE and the style CNN read their crops from the shards through a ``DataLoader``; F0
statistics accumulate one utterance at a time; a rerun resumes from the complete shards (see
:func:`train_tokenizer`).

Evaluation uses the ``test`` split (``valid`` when there is no test split): ``pnmi`` and
``phone_purity`` of units against phone alignments (frame centres at ``0.04 t + 0.0225`` s, the
centre of a 25 Hz HuBERT frame's 720-sample receptive field), ``f0_rmse_cents`` and
``vuv_error`` of the VQ-VAE's reconstruction, ``codebook_perplexity``/``codebook_usage`` of the
pitch codes, ``style_purity`` of style tokens against utterance style labels (with
majority-class chance levels alongside).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch

from ..atomic import atomic_file
from spiritlm.constants import SAMPLE_RATE, STREAM_RATES
from . import metrics as M
from .f0 import compute_speaker_stats, extract_f0_batch, meta_speaker_stats, normalise, save_meta_speaker_stats
from .features import FeatureConfig, load_backend
from .kmeans import KMeansConfig, train_kmeans_chunks
from .pitch import PitchConfig, PitchTokenizer
from .speech_tokenizer import SpeechTokenizer, UnitConfig, UnitTokenizer
from .style import StyleConfig, cnn_logmels, pooled_embeddings, StyleTokenizer, StyleTrainConfig, W2V2StyleEncoder, train_style_cnn
from .utils import load_audio_batch
from .vqvae import VQVAEConfig, VQVAETrainConfig, codebook_stats, train_vqvae

logger = logging.getLogger(__name__)

#: Training steps of the pitch VQ-VAE and the style CNN follow the corpus: this many passes over
#: the training frames, within [a floor, the preset's steps] (the preset's steps are a cap that
#: large corpora reach). The floors are measured, not guessed: on 40 synthetic utterances (152 s)
#: the tiny VQ-VAE has not learned voicing after 400 steps (V/UV error 0.377), has after 500
#: (0.031), 600 (0.027) and 800 (0.019); the style CNN reaches purity 0.93 in 64 steps (0.87 in 300).
EPOCHS = 20
MIN_STEPS_PITCH = 600
MIN_STEPS_STYLE = 50


def scaled_steps(max_steps: int, num_frames: int, batch_size: int, crop_frames: int, min_steps: int, epochs: float = EPOCHS) -> int:
    """Optimiser steps for ``epochs`` passes over ``num_frames`` in batches of ``batch_size`` crops of
    ``crop_frames``, clipped to ``[min(min_steps, max_steps), max_steps]``."""
    per_epoch = num_frames / max(1, batch_size * crop_frames)
    return int(min(max_steps, max(min(min_steps, max_steps), np.ceil(epochs * per_epoch))))


def plan_steps(p: TrainPreset, train_seconds: float) -> TrainPreset:
    """The preset with its pitch VQ-VAE and style CNN steps scaled to ``train_seconds`` of audio
    (F0 frames at 200 Hz, mel frames at 50 Hz; see :data:`EPOCHS`), when ``p.scale_steps``."""
    if not p.scale_steps:
        return p
    v, st = p.vqvae_train, p.style_train
    vq = scaled_steps(v.steps, int(train_seconds * 200), v.batch_size, v.crop_frames, MIN_STEPS_PITCH)
    style = scaled_steps(st.steps, int(train_seconds * 50), st.batch_size, st.crop_frames, MIN_STEPS_STYLE)
    return replace(p, vqvae_train=replace(v, steps=vq), style_train=replace(st, steps=style))


class _StageClock(logging.Filter):
    """Adds to each ``[stage] step N:`` record of the stage trainers' loggers (the pitch VQ-VAE's,
    the style CNN's) the stage's estimated time left and the run's total; :meth:`watch` attaches it."""

    def __init__(self, t_start: float) -> None:
        super().__init__()
        self.t_start = t_start
        self.name, self.steps, self.t0 = "", 0, t_start

    def start(self, name: str, steps: int) -> None:
        self.name, self.steps, self.t0 = name, steps, time.time()

    @contextlib.contextmanager
    def watch(self, *loggers: logging.Logger):
        for lg in loggers:
            lg.addFilter(self)
        try:
            yield self
        finally:
            for lg in loggers:
                lg.removeFilter(self)

    def filter(self, record: logging.LogRecord) -> bool:
        import re

        line = record.getMessage()
        m = re.search(r"\] step (\d+):", line)
        if m and self.steps and int(m.group(1)) > 0:
            done, now = int(m.group(1)), time.time()
            left = (now - self.t0) / done * (self.steps - done)
            record.msg, record.args = line + f"  [{self.name}: ~{left:.0f}s left of this stage; {now - self.t_start:.0f}s elapsed]", None
        return True


@dataclass
class TrainPreset:
    """Everything a preset fixes (see the module docstring)."""

    features: FeatureConfig
    units_kmeans: KMeansConfig
    expressive: bool
    pitch: PitchConfig = field(default_factory=PitchConfig)
    vqvae: VQVAEConfig = field(default_factory=VQVAEConfig)
    vqvae_train: VQVAETrainConfig = field(default_factory=VQVAETrainConfig)
    style: StyleConfig = field(default_factory=StyleConfig)
    style_train: StyleTrainConfig = field(default_factory=StyleTrainConfig)
    style_kmeans: KMeansConfig = field(default_factory=lambda: KMeansConfig(n_clusters=100))
    scale_steps: bool = False
    """scale the pitch and style training steps with the corpus (:func:`plan_steps`); the named presets do."""


#: the old preset names name the packaged recipes ``recipes/configs/tokenizer-*.yaml``
PRESET_RECIPES = {"tiny": "tokenizer-tiny", "base": "tokenizer-base", "expressive": "tokenizer-expressive"}


def make_preset(name: str, hubert: str | None = None, layer: int = 11, style_encoder: str | None = None) -> TrainPreset:
    """A preset from its recipe: ``tiny``, ``base``, ``expressive`` (``recipes/configs/tokenizer-NAME.yaml``),
    a packaged recipe's name or a YAML file of :class:`TrainPreset`'s fields.

    A recipe with HuBERT features (``base``, ``expressive``) takes the model from ``hubert`` (a
    transformers directory or a fairseq checkpoint file), at ``layer``; with ``style_encoder``
    (a wav2vec 2.0 directory) its style stream is that encoder + k-means instead of the CNN.

    >>> tiny = make_preset("tiny")
    >>> tiny.features.backend, tiny.units_kmeans.n_clusters, tiny.vqvae_train.steps, tiny.style_kmeans.n_clusters
    ('mfcc', 100, 800, 16)

    Raises:
        ValueError: an unknown preset, a recipe that does not fit :class:`TrainPreset`, or a
            HuBERT recipe without ``hubert``.
    """
    from ..errors import UserError
    from ..trainer import config_from_dict, read_recipe

    try:
        path, values = read_recipe(PRESET_RECIPES.get(name, name), RECIPE_FAMILY, flag="--preset")
        p = config_from_dict(TrainPreset(features=FeatureConfig(), units_kmeans=KMeansConfig(), expressive=False), values, str(path))
    except UserError as exc:
        raise ValueError(str(exc)) from None
    if p.features.backend in ("hubert", "fairseq-hubert"):
        if not hubert:
            raise ValueError(f"preset {name!r} needs --hubert (a transformers directory or a fairseq checkpoint file)")
        backend = "hubert" if os.path.isdir(hubert) else "fairseq-hubert"
        p = replace(p, features=replace(p.features, backend=backend, checkpoint=os.path.abspath(hubert), layer=layer))
        if style_encoder:
            p = replace(p, style=replace(p.style, backend="w2v2", checkpoint=style_encoder, mode="kmeans"))
    return p


#: packaged tokenizer recipes are ``recipes/configs/tokenizer-*.yaml``
RECIPE_FAMILY = "tokenizer"


#: Utterances per on-disk shard of the streaming stages (a multiple of the batch of 16, so the
#: batches are those of an in-memory run). Peak memory holds one batch's audio and one shard's outputs.
SHARD_ITEMS = 256


#: ``plan.json`` key -> the flags of ``spiritlm tokenizer train`` that decide it (messages)
PLAN_FLAGS = {"manifest": "--manifest", "utterances": "--manifest / --max_utts (the utterances)",
              "features": "--preset / --hubert / --layer (the unit features)", "f0": "--preset (the F0 tracker)",
              "shard_items": "the shard size of another spiritlm version"}


def _check_work_dir(work_dir: str, plan: dict, overwrite: bool = False) -> None:
    """Writes ``work_dir/plan.json`` or checks that the shards there were made for this run.

    The shards of an interrupted run are resumed when its plan is this run's; another plan is
    refused naming the flag that differs, or, with ``overwrite``, the old shards are removed and
    the run starts over.
    """
    import shutil

    from ..errors import UserError

    os.makedirs(work_dir, exist_ok=True)
    path = os.path.join(work_dir, "plan.json")
    if os.path.exists(path):
        try:
            with open(path) as f:
                old = json.load(f)
        except (OSError, ValueError) as exc:
            old = {"unreadable": str(exc)}
        if old == plan:
            return
        diff = sorted(k for k in set(old) | set(plan) if old.get(k) != plan.get(k))
        if not overwrite:
            flags = "; ".join(PLAN_FLAGS.get(k, k) for k in diff)
            raise UserError(f"{path}: shards of an unfinished run with other settings ({flags}): rerun with that run's "
                            f"settings to resume it, pass --overwrite true to start over, or pass another --work_dir")
        shutil.rmtree(work_dir)
        os.makedirs(work_dir)
    with atomic_file(path) as f:
        json.dump(plan, f, indent=1)


def _shard_compute(items, fn, errors: list[dict] | None = None, batch_size: int = 16):
    """``indices -> arrays`` for :meth:`FrameShards.build`: applies ``fn`` (list of waveforms ->
    list of arrays) to the audio of ``items[indices]`` in batches of ``batch_size`` readable
    utterances, loading one batch's audio at a time; None for unreadable audio (appended to
    ``errors`` when given)."""

    def compute(idx: list[int]) -> tuple[list[np.ndarray | None], dict[str, list]]:
        errs: list[dict] = []
        got, samples, ids, wavs = {}, {}, [], []

        def flush():
            got.update(zip(ids, fn(wavs)))
            ids.clear()
            wavs.clear()

        for i in idx:
            kept, w = load_audio_batch([items[i]], errs)
            if kept:
                ids.append(kept[0].id)
                wavs.append(w[0])
                samples[kept[0].id] = len(w[0])
                if len(wavs) == batch_size:
                    flush()
        if wavs:
            flush()
        if errors is not None:
            errors.extend(errs)
        return [got.get(items[i].id) for i in idx], {"samples": [samples.get(items[i].id, 0) for i in idx]}

    return compute


def _read_items(manifest: str, max_utts: int | None) -> list:
    """The first ``max_utts`` utterances of ``manifest``, checked as :func:`read_audio_manifest`
    checks them, with the alignments, text and extra keys dropped from every utterance that is
    not evaluated (see :meth:`TokenizerTraining.unit_features`'s ``eval_split``). Memory per training utterance
    is its id, audio path and labels (~1 kB), not its alignments (~11 kB each on the synthetic
    corpus: 47 MB for 4,150 utterances read whole). Two passes over the file: the first finds
    which split is evaluated."""
    from ..corpus.manifest import AUDIO_KEYS, ManifestError, iter_manifest

    limit = max_utts or None
    splits = {u.split for k, u in enumerate(iter_manifest(manifest, required=AUDIO_KEYS)) if limit is None or k < limit}
    evaluated = "test" if "test" in splits else ("valid" if "valid" in splits else None)
    items, seen = [], set()
    for u in iter_manifest(manifest, required=AUDIO_KEYS):
        if u.id in seen:  # read_manifest's check, over the whole file
            raise ManifestError(manifest, None, f"duplicate id {u.id!r}")
        seen.add(u.id)
        if limit is not None and len(items) >= limit:
            continue
        if evaluated is not None and u.split != evaluated:
            u = replace(u, words=[], phones=None, text=None, extra={})
        items.append(u)
    return items


def _fit_kmeans(shards, indices: list[int], cfg: KMeansConfig, work_dir: str, name: str) -> np.ndarray:
    """k-means centres of a bounded random sample of the frames of ``indices`` in ``shards``.

    The sample (at most ``cfg.max_frames`` rows, drawn as
    :func:`spiritlm.tokenizers.kmeans.sample_frames` draws them) is copied once, utterance by
    utterance, to ``work_dir/<name>-sample-<digest>.npy`` (reused by a resumed run), then
    :func:`spiritlm.tokenizers.kmeans.train_kmeans_chunks` fits it with ``partial_fit`` reading
    one chunk of ``cfg.batch_size`` rows at a time (the initialisation: ``3 x batch_size``).
    Memory is a few chunks, not ``max_frames x dim``.
    """
    import hashlib

    from .shards import read_rows

    key = json.dumps({"shards": os.path.abspath(shards.directory), "indices": list(map(int, indices)), "max_frames": cfg.max_frames, "seed": cfg.seed})
    path = os.path.join(work_dir, f"{name}-sample-{hashlib.sha1(key.encode()).hexdigest()[:12]}.npy")
    resumed = os.path.exists(path)
    n, dim = shards.write_sample(path, indices, cfg.max_frames, cfg.seed)
    logger.info(f"[train] {name}: k-means on {n} frames of dim {dim} (--max_frames {cfg.max_frames}), partial_fit in chunks of {min(cfg.batch_size, n)}"
        + (f"; sample resumed from {path}" if resumed else ""))
    centers, _ = train_kmeans_chunks(lambda rows: read_rows(path, rows), n, cfg)
    return centers


def train_tokenizer(
    manifest: str,
    out: str,
    preset: str | TrainPreset = "tiny",
    hubert: str | None = None,
    layer: int = 11,
    style_encoder: str | None = None,
    seed: int = 0,
    device: str = "cpu",
    max_utts: int | None = None,
    threads: int | None = 1,
    work_dir: str | None = None,
    max_frames: int | None = None,
    num_workers: int | None = None,
    overwrite: bool = False,
) -> dict:
    """Trains a speech tokenizer into ``out`` and writes ``out/metrics.json``; returns the metrics.

    ``overwrite``: shards in ``work_dir`` made for other settings are removed and recomputed
    (without it they are refused, naming the flag: :func:`_check_work_dir`).

    Streaming: unit features, F0 tracks and style embeddings are computed a shard of
    :data:`SHARD_ITEMS` utterances at a time and written to memory-mapped shards in ``work_dir``
    (:mod:`spiritlm.tokenizers.shards`); the k-means stages fit a bounded random sample of
    frames (``max_frames``: the units' k-means, default the preset's) copied to disk, with
    ``partial_fit`` one chunk of ``batch_size`` frames at a time (:func:`_fit_kmeans`); the
    VQ-VAE and the style CNN (its log-mels in shards too) read their crops through a
    ``DataLoader`` with ``num_workers`` processes (None: the preset's, 0). What still grows with
    the corpus is the manifest's per-utterance metadata (ids, paths, labels; alignments are kept
    for the evaluated split only, :func:`_read_items`). A rerun with the same ``work_dir``
    resumes from the complete shards and samples.
    ``work_dir`` None: ``out/work``, removed once the tokenizer is written.

    ``threads`` sets torch's intra-op CPU threads for the run (default 1, as ``spiritlm tokenizer
    train --threads``: it avoids the thrashing of oversubscribed shared CPUs; 0 or None keeps
    torch's default). BLAS pools run one thread.
    Same seed and threads give the same metrics on one machine; across machines the CPU's
    instruction set matters too (see :mod:`spiritlm.numerics`, recorded in ``metrics["numerics"]``).
    """
    if threads:
        from spiritlm.numerics import threads as pinned_threads

        with pinned_threads(threads):
            return train_tokenizer(manifest, out, preset, hubert, layer, style_encoder, seed, device, max_utts, None, work_dir, max_frames,
                                   num_workers, overwrite)
    from spiritlm.numerics import one_blas_thread

    # One BLAS thread whatever the machine's core count (see spiritlm.numerics). OpenMP is left
    # alone: torch's intra-op threads are OpenMP threads (--threads), and scikit-learn's k-means
    # gives the same centres with any OpenMP thread count.
    with one_blas_thread():
        own_work = work_dir is None
        work_dir = work_dir or os.path.join(out, "work")
        m = TokenizerTraining(manifest, out, preset, hubert, layer, style_encoder, seed, device, max_utts, work_dir, max_frames,
                              num_workers, overwrite).run()
        if own_work:
            import shutil

            shutil.rmtree(work_dir, ignore_errors=True)
        return m


class TokenizerTraining:
    """One tokenizer training run: its phases in the order that keeps runs reproducible.

    ``setup`` (the preset with this run's seed, the utterances, the work folder's plan), then
    ``unit_features`` (shards; the pass that finds unreadable audio, which fixes the splits and
    the steps of the later parts), ``units`` (k-means and its phone metrics), ``pitch`` (F0
    shards, the VQ-VAE and its F0 metrics) and ``style`` (the CNN or wav2vec 2.0 encoder, k-means,
    purity), and ``finish`` (the tokenizer folder and ``metrics.json``). The step loops of the parts
    that train by gradient steps are :func:`spiritlm.tokenizers.vqvae.train_vqvae` and
    :func:`spiritlm.tokenizers.style.train_style_cnn`.
    """

    def __init__(self, manifest, out, preset, hubert, layer, style_encoder, seed, device, max_utts, work_dir, max_frames, num_workers,
                 overwrite=False) -> None:
        self.manifest, self.out, self.preset, self.seed, self.device = manifest, out, preset, seed, device
        self.hubert, self.layer, self.style_encoder = hubert, layer, style_encoder
        self.max_utts, self.work_dir, self.max_frames, self.num_workers, self.overwrite = max_utts, work_dir, max_frames, num_workers, overwrite
        self.pitch_tok = self.style_tok = None

    def run(self) -> dict:
        self.setup()
        self.unit_features()
        self.units()
        if self.p.expressive:
            self.pitch()
            self.style()
        return self.finish()

    def setup(self) -> None:
        """The preset with this run's seed, the utterances, and the work folder's ``plan.json``."""
        seed, preset = self.seed, self.preset
        self.t_start = time.time()
        p = preset if isinstance(preset, TrainPreset) else make_preset(preset, self.hubert, self.layer, self.style_encoder)
        p = replace(p, units_kmeans=replace(p.units_kmeans, seed=seed), style_kmeans=replace(p.style_kmeans, seed=seed),
                    vqvae_train=replace(p.vqvae_train, seed=seed), style_train=replace(p.style_train, seed=seed))
        if self.max_frames:
            p = replace(p, units_kmeans=replace(p.units_kmeans, max_frames=self.max_frames))
        if self.num_workers is not None:
            p = replace(p, vqvae_train=replace(p.vqvae_train, num_workers=self.num_workers),
                        style_train=replace(p.style_train, num_workers=self.num_workers))
        self.p = p
        torch.manual_seed(seed)
        self.all_items = _read_items(self.manifest, self.max_utts)
        if not self.all_items:
            raise ValueError(f"{self.manifest}: no utterances")
        ids = hashlib.sha1("\n".join(f"{it.id}\t{it.audio}" for it in self.all_items).encode()).hexdigest()
        self.pitch_cfg = replace(p.pitch, f0=replace(p.pitch.f0, device="cpu"))
        _check_work_dir(self.work_dir, {"manifest": os.path.abspath(self.manifest), "utterances": ids, "shard_items": SHARD_ITEMS,
                                        "features": json.loads(json.dumps(asdict(p.features), default=str)),
                                        "f0": json.loads(json.dumps(asdict(self.pitch_cfg.f0), default=str))}, self.overwrite)

    def unit_features(self) -> None:
        """Unit feature shards (the pass that finds unreadable audio), the splits, the plan of steps."""
        from .shards import FrameShards, LazySequence

        all_items, t0 = self.all_items, time.time()
        self.backend = load_backend(self.p.features, self.device)
        errors: list[dict] = []
        self.feat_shards = feat_shards = FrameShards(os.path.join(self.work_dir, "features"), len(all_items), SHARD_ITEMS)
        feat_shards.build(_shard_compute(all_items, self.backend.extract, errors), "unit features")
        for e in errors:
            logger.info(f"[train] skipping {e['id']}: {e['error']}")
        self.keep = keep = [i for i in range(len(all_items)) if feat_shards.ok(i)]
        if not keep:
            raise ValueError(f"{self.manifest}: no readable audio ({len(all_items)} utterances skipped)")
        skipped = len(all_items) - len(keep)
        if skipped and not errors:
            logger.info(f"[train] skipping {skipped} utterances whose audio was unreadable (from the resumed shards)")
        self.items = items = [all_items[i] for i in keep]
        self.feats = LazySequence(len(keep), lambda k: feat_shards[keep[k]])
        self.t_feats = time.time() - t0
        splits = {it.split for it in items}
        eval_split = "test" if "test" in splits else ("valid" if "valid" in splits else None)
        self.train_idx = train_idx = [i for i, it in enumerate(items) if it.split not in ("test", "valid")] or list(range(len(items)))
        self.test_idx = test_idx = [i for i, it in enumerate(items) if it.split == eval_split] if eval_split else train_idx
        logger.info(f"[train] {len(items)} utterances: {len(train_idx)} for training, {len(test_idx)} for evaluation ({eval_split or 'train'})")
        seconds = sum(feat_shards.info(keep[i], "samples") for i in train_idx) / SAMPLE_RATE
        self.p = p = plan_steps(self.p, seconds)
        if p.expressive:
            logger.info(f"[train] plan for {seconds:.0f}s of training audio: units ({p.features.backend} features + k-means), "
                f"pitch VQ-VAE {p.vqvae_train.steps} steps, style "
                + (f"CNN {p.style_train.steps} steps" if p.style.backend == "cnn" else "encoder")
                + " + k-means; each stage's log lines show its time left")
        self.clock = _StageClock(self.t_start)
        os.makedirs(self.out, exist_ok=True)
        self.metrics: dict = {"preset": self.preset if isinstance(self.preset, str) else "custom", "seed": self.seed,
                              "eval_split": eval_split or "train", "num_train_utts": len(train_idx), "num_eval_utts": len(test_idx)}
        self.timings: dict[str, float] = {}

    def units(self) -> None:
        """k-means on a bounded sample of the training frames (read from the shards); PNMI and phone purity."""
        p, items, test_idx, metrics, t0 = self.p, self.items, self.test_idx, self.metrics, time.time()
        centers = _fit_kmeans(self.feat_shards, [self.keep[i] for i in self.train_idx], p.units_kmeans, self.work_dir, "units")
        self.unit_tok = units = UnitTokenizer(self.backend, centers, UnitConfig(features=p.features))
        unit_codes = {i: units.quantizer(torch.from_numpy(np.array(self.feats[i], dtype=np.float32)).to(units.backend.device)).cpu().numpy()
                      for i in test_idx}
        self.timings["units_s"] = time.time() - t0 + self.t_feats
        phones_ok = all(items[i].phones is not None for i in test_idx)
        if phones_ok:
            labs, toks = [], []
            for i in test_idx:
                labs += M.frame_labels(items[i].segments("phones"), len(unit_codes[i]), STREAM_RATES["hubert"], 0.0225)
                toks += unit_codes[i].tolist()
            metrics.update(pnmi=M.pnmi(labs, toks), phone_purity=M.purity(labs, toks), phone_majority_rate=M.majority_rate(labs),
                           num_units=int(centers.shape[0]), units_used=int(len(set(toks))))
        else:
            logger.info("[train] no phone alignments in the evaluation split: pnmi/phone_purity not computed")
        logger.info(f"[train] units: {centers.shape[0]} clusters on {p.features.backend} features ({self.timings['units_s']:.1f}s) "
                 + (f"pnmi={metrics['pnmi']:.3f} phone_purity={metrics['phone_purity']:.3f}" if phones_ok else ""))

    def pitch(self) -> None:
        """F0 shards, speaker statistics, the pitch VQ-VAE, and its F0 reconstruction metrics."""
        from .shards import FrameShards, LazySequence

        p, items, keep, train_idx, test_idx, out, t0 = self.p, self.items, self.keep, self.train_idx, self.test_idx, self.out, time.time()
        pitch_cfg = self.pitch_cfg

        def f0_frames(ws):  # (T, 2): F0 in Hz and voicing, one row per 5 ms frame
            return [np.stack([f, v], 1).astype(np.float32) for f, v in extract_f0_batch(ws, pitch_cfg.f0)]

        f0_shards = FrameShards(os.path.join(self.work_dir, "f0"), len(self.all_items), SHARD_ITEMS)
        f0_shards.build(_shard_compute(self.all_items, f0_frames), "F0")

        def track(i):  # (f0, vuv) float32 of utterance i of items, as the F0 backend returned them
            x = np.asarray(f0_shards[keep[i]])
            return np.ascontiguousarray(x[:, 0]), np.ascontiguousarray(x[:, 1])

        f0s = LazySequence(len(items), track)
        stats = compute_speaker_stats((items[i].speaker or items[i].id, f0s[i][0]) for i in train_idx)

        def example(i):
            f, v = f0s[i]
            return normalise(f, v, stats.mean_for(items[i].speaker, f), stats.global_std)

        ex = LazySequence(len(items), example)
        os.makedirs(os.path.join(out, "pitch"), exist_ok=True)
        # the same speakers in Meta's speaker_stats format (f0_mean in Hz), for Meta's pitch quantizer config
        save_meta_speaker_stats(os.path.join(out, "pitch", "speaker_stats.pt"),
                                meta_speaker_stats((items[i].speaker or items[i].id, f0s[i][0]) for i in train_idx))
        self.clock.start("pitch", p.vqvae_train.steps)
        with self.clock.watch(logging.getLogger(train_vqvae.__module__)):
            model, vq_log = train_vqvae(LazySequence(len(train_idx), lambda k: ex[train_idx[k]]), p.vqvae, p.vqvae_train,
                                        out_dir=os.path.join(out, "pitch"), device=self.device, lengths=[f0_shards.length(keep[i]) for i in train_idx])
        self.pitch_tok = PitchTokenizer(model, stats, pitch_cfg)
        self.metrics["pitch_train_last_log"] = vq_log[-1] if vq_log else None
        self._pitch_metrics(ex, f0s, stats)
        self.timings["pitch_s"] = time.time() - t0
        m = self.metrics
        logger.info(f"[train] pitch: f0_rmse_cents={m['f0_rmse_cents']:.1f} vuv_error={m['vuv_error']:.3f} "
                 f"perplexity={m['codebook_perplexity']:.1f} usage={m['codebook_usage']:.2f} ({self.timings['pitch_s']:.1f}s)")

    def _pitch_metrics(self, ex, f0s, stats) -> None:
        """F0 RMSE (cents) and V/UV error of the VQ-VAE's reconstruction of the evaluated split, the
        codebook's usage, and the speaker-mean baseline."""
        items, test_idx, p = self.items, self.test_idx, self.p
        codes = self.pitch_tok.encode_features([ex[i] for i in test_idx])
        cents, vuv_err = [], []
        for k, i in enumerate(test_idx):
            rec = self.pitch_tok.reconstruct(codes[k])
            mean = stats.mean_for(items[i].speaker, f0s[i][0])
            f0_hat = np.exp(rec[0] * stats.global_std + mean)
            c, e = M.f0_errors(f0s[i][0], f0s[i][1], f0_hat, (rec[1] > 0.5).astype(np.float32))
            cents.append(c)
            vuv_err.append(e)
        cents_all = np.concatenate(cents)
        self.metrics.update(f0_rmse_cents=float(np.sqrt(np.mean(cents_all**2))), vuv_error=float(np.concatenate(vuv_err).mean()),
                            **codebook_stats(np.concatenate(codes), p.vqvae.codebook_size), pitch_codebook_size=p.vqvae.codebook_size,
                            voiced_rate=float(np.mean(np.concatenate([f0s[i][1] for i in test_idx]))))
        # reference: a constant F0 at the speaker mean
        self.metrics["f0_rmse_cents_speaker_mean_baseline"] = float(np.sqrt(np.mean(np.concatenate([
            (M.CENTS_PER_LOG * (np.log(f0s[i][0][f0s[i][0] > 0]) - stats.mean_for(items[i].speaker, f0s[i][0]))) ** 2 for i in test_idx]))))

    def style(self) -> None:
        """The style encoder (the CNN trained on the style labels, or a wav2vec 2.0), k-means of its
        pooled embeddings, and style purity."""
        from .shards import FrameShards, LazySequence

        items, keep, train_idx, test_idx, device, t0 = self.items, self.keep, self.train_idx, self.test_idx, self.device, time.time()
        scfg = self.p.style
        encoder = self._style_encoder() if scfg.backend == "cnn" else W2V2StyleEncoder.from_pretrained(scfg.checkpoint)
        encoder.to(device)
        # the pooled embeddings' shards belong to this encoder's weights (a resumed run that
        # trains the same CNN again, same seed, finds them)
        digest = hashlib.sha1()
        for name, t in sorted(encoder.state_dict().items()):
            digest.update(name.encode() + t.detach().cpu().contiguous().numpy().tobytes())
        pooled_shards = FrameShards(os.path.join(self.work_dir, f"style-{digest.hexdigest()[:12]}"), len(self.all_items), SHARD_ITEMS)
        pooled_shards.build(_shard_compute(self.all_items, lambda ws: pooled_embeddings(encoder, ws, scfg.window_frames)), "style embeddings")
        pooled = LazySequence(len(items), lambda i: np.array(pooled_shards[keep[i]], dtype=np.float32))
        style_centers = _fit_kmeans(pooled_shards, [keep[i] for i in train_idx], self.p.style_kmeans, self.work_dir, "style")
        self.style_tok = style_tok = StyleTokenizer(encoder, scfg, style_centers)
        style_codes = {i: style_tok.quantizer(torch.from_numpy(pooled[i]).to(device)).cpu().numpy() for i in test_idx}
        if all(items[i].style is not None for i in test_idx):
            labs = [items[i].style for i in test_idx for _ in style_codes[i]]
            toks = [int(c) for i in test_idx for c in style_codes[i]]
            self.metrics.update(style_purity=M.purity(labs, toks), style_majority_rate=M.majority_rate(labs),
                                style_pnmi=M.pnmi(labs, toks), num_style_tokens=int(style_centers.shape[0]))
        self.timings["style_s"] = time.time() - t0
        logger.info(f"[train] style: purity={self.metrics.get('style_purity', float('nan')):.3f} ({self.timings['style_s']:.1f}s)")

    def _style_encoder(self):
        """The CNN style encoder trained on the training utterances' style labels (log-mels in shards of their own)."""
        from .shards import FrameShards

        items, train_idx, scfg = self.items, self.train_idx, self.p.style
        labels = [items[i].style for i in train_idx]
        if any(lab is None for lab in labels):
            raise ValueError(f"{self.manifest}: the cnn style encoder needs a 'style' label on every training utterance")
        # the training log-mels go to shards of their own (train utterances only, keyed by
        # the mel settings), then the CNN reads its crops from them through a DataLoader
        mel_key = hashlib.sha1(json.dumps([scfg.n_mels, SAMPLE_RATE, [items[i].id for i in train_idx]]).encode()).hexdigest()[:12]
        mel_shards = FrameShards(os.path.join(self.work_dir, f"style-mels-{mel_key}"), len(train_idx), SHARD_ITEMS)
        mel_shards.build(_shard_compute([items[i] for i in train_idx], lambda ws: cnn_logmels(scfg, ws)), "style log-mels")
        self.clock.start("style", self.p.style_train.steps)
        with self.clock.watch(logging.getLogger(train_style_cnn.__module__)):
            encoder, style_log = train_style_cnn(None, labels, scfg, self.p.style_train, mels=mel_shards)
        self.metrics["style_encoder_train_accuracy"] = style_log[-1]["accuracy"]
        return encoder

    def finish(self) -> dict:
        """The tokenizer folder and ``metrics.json`` (with the timings, the preset and the numerics)."""
        from ..numerics import environment

        SpeechTokenizer(self.unit_tok, self.pitch_tok, self.style_tok).save(self.out)
        metrics, timings = self.metrics, self.timings
        timings["total_s"] = time.time() - self.t_start
        metrics["timings"] = {k: round(v, 2) for k, v in timings.items()}
        metrics["config"] = json.loads(json.dumps(asdict(self.p), default=str))
        metrics["numerics"] = environment()  # what same-seed reproducibility depends on (spiritlm.numerics)
        with atomic_file(os.path.join(self.out, "metrics.json")) as f:
            json.dump(metrics, f, indent=1)
        return metrics
