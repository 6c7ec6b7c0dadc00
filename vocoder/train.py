"""Training the unit HiFi-GAN: random aligned segments, MPD + MSD, exact resume, the final vocoder folder.

The recipe follows speechbrain's discrete-unit HiFi-GAN and speech-resynthesis (both HiFi-GAN
V1 training): each step draws ``batch_size`` random segments of ``segment_units`` units
(``segment_units * 640`` samples), updates the discriminator on the generator's detached output
(LSGAN), then the generator on ``45 * mel L1 + LSGAN + feature matching + duration MSE`` (weights
in :mod:`spiritlm.vocoder.losses`); AdamW (2e-4, betas 0.8/0.99) and an exponential decay of the
learning rate for both. The duration predictor learns the run lengths of each segment's
deduplicated units (MSE on ``log(1 + frames)``).

Outputs in ``out``:

* the vocoder itself (``Vocoder.save``'s files: ``config.json``, weights, ``speakers.txt``), so
  ``spiritlm vocoder synth --vocoder OUT`` works, written when the run reaches ``max_steps``;
* ``train_config.json`` (this recipe), ``metrics.jsonl`` (one record per log / validation),
  ``metrics.json`` (summary), ``tb/`` (TensorBoard scalars and audio), ``samples/step_N/*.wav``;
* ``checkpoints/step_N/`` (``generator.safetensors``, ``discriminator.safetensors``,
  ``optimizers.pt`` — weights-only optimiser states, ``rng.pt`` — torch RNG, ``trainer_state.json``
  — step, schedulers and the segment sampler, ``COMPLETE`` — written last). The checkpoint rules
  are the LM's (:mod:`spiritlm.checkpointing`): a checkpoint is written into a temporary folder
  and renamed, older ones are pruned to ``keep_checkpoints`` only after, so an interrupted save
  leaves the previous one intact; a resume takes the newest checkpoint that reads, setting a
  truncated one aside (``step_N.bad``) with a warning naming the file.

The recipe is :class:`VocoderRecipe`, on the trainer skeleton every trainer shares
(:mod:`spiritlm.trainer`: setup / train_step / log_train / validate / save_checkpoint / finish,
the loop, the log window kept in the checkpoint); its settings are a YAML file in
``recipes/configs/`` (``vocoder-tiny.yaml``, the demo's and the README's CPU recipe;
``vocoder-base.yaml``, ``vocoder-expressive.yaml``), read by :meth:`TrainConfig.from_recipe`.

The run folder follows the rule of every trainer (:data:`RUN_RULE`, a
:class:`spiritlm.trainer.RunRule`): rerunning an interrupted run with the same settings resumes
it (and reproduces the uninterrupted run exactly on CPU, logged metrics included); a folder
holding a trained vocoder, or an unfinished run of other settings, is refused unless ``overwrite``.

GPU: bf16 autocast for the generator and discriminator (losses in float32), DDP under
``torchrun`` (each rank draws its own utterances; rank 0 writes).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from speechbrain import Stage
from torch import nn

from spiritlm.atomic import atomic_file, publish_dir
from spiritlm.checkpointing import (
    CHECKPOINTS_DIR,
    COMPLETE_NAME,
    CheckpointError,
    checkpoint_step,
    complete_checkpoints,
    find_resume_point,
    mark_complete,
    prune_checkpoints,
    read_checked,
)
from spiritlm.distributed import Dist
from spiritlm.errors import UserError
from spiritlm.metrics_log import MetricsLog, read_history
from spiritlm.trainer import LogWindow, Recipe, RunRule, Schedule, config_from_dict, read_recipe
from spiritlm.units_jsonl import iter_unit_lines
from .config import VocoderConfig
from .data import SegmentSampler, Utterance, attach_f0, load_utterances, most_frequent_codes, read_speakers
from .losses import LossWeights, MelConfig, build_discriminator, build_losses, silence_loss
from .model import UnitHifiGAN, num_parameters

#: Meta's table sizes, used for a stream the data has and neither the preset nor a tokenizer sizes
DEFAULT_PITCH_CODES = 64
DEFAULT_STYLE_CODES = 100


@dataclass
class TrainConfig:
    """A vocoder training run.

    Attributes:
        preset: vocoder preset (``tiny``, ``base``, ``expressive``: :data:`spiritlm.vocoder.config.PRESETS`);
            table sizes are then set from the tokenizer (or the data) and the manifest's speakers.
        max_steps: optimiser steps (each: one discriminator and one generator update).
        batch_size: segments per step (per process under DDP).
        segment_units: units per segment (640 samples each).
        lr: peak learning rate of both AdamW optimisers.
        betas: AdamW betas.
        lr_decay: ExponentialLR factor, applied every ``decay_every`` steps (speech-resynthesis:
            0.999 per epoch).
        decay_every: steps between two decays.
        disc_width_div: divide the discriminator's channels by this (1 = speechbrain's full
            ``HifiganDiscriminator``; the tiny recipe uses 16).
        disc_start_step: train on the mel and duration losses alone (no discriminator) before
            this step, as ParallelWaveGAN's ``discriminator_train_start_steps`` does; the tiny
            CPU recipe spends most of its few hundred steps there (see vocoder/README.md).
        weights: loss weights.
        mel: mel spectrogram of the L1 loss.
        seed: seeds the model initialisation, the segment sampler and dropout.
        log_every: steps between metrics records.
        val_every: steps between validations (mel L1 of whole validation utterances) and audio
            samples; 0 = only at the end.
        save_every: steps between checkpoints (0 = only at the end).
        keep_checkpoints: most recent complete checkpoints kept (0: all; the one just written is never
            removed, an older one only once a newer one is complete): the LM recipe's meaning.
        num_samples: validation utterances written as audio samples.
        max_val_utts: validation utterances scored.
        threads: CPU threads of torch, BLAS and OpenMP (0: leave them as they are).
        dtype: ``auto`` (bfloat16 autocast on GPU, float32 on CPU), ``float32`` or ``bfloat16``.
    """

    preset: str = "tiny"
    max_steps: int = 1000
    batch_size: int = 8
    segment_units: int = 12
    lr: float = 2e-4
    betas: tuple[float, float] = (0.8, 0.99)
    lr_decay: float = 0.999
    decay_every: int = 1000
    disc_width_div: int = 16
    disc_start_step: int = 0
    weights: LossWeights = field(default_factory=LossWeights)
    mel: MelConfig = field(default_factory=MelConfig)
    seed: int = 0
    log_every: int = 10
    val_every: int = 200
    save_every: int = 200
    keep_checkpoints: int = 1
    num_samples: int = 2
    max_val_utts: int = 8
    threads: int = 1
    dtype: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "the recipe") -> "TrainConfig":
        """A config from a recipe's values over the defaults (``weights`` and ``mel``: mappings of
        their fields; :func:`spiritlm.trainer.config_from_dict`).

        Raises:
            UserError: a key that is not a field (naming ``where``).
        """
        return config_from_dict(cls(), values, where)

    @classmethod
    def from_recipe(cls, where: str = "vocoder-tiny", **overrides: Any) -> "TrainConfig":
        """The config of a recipe: a YAML file of ``spiritlm vocoder train``'s options (the
        packaged ones by name: ``vocoder-tiny`` is ``recipes/configs/vocoder-tiny.yaml``), with
        fields overridden (``weights``/``mel`` overrides merge into the recipe's). Flags that are
        not fields of their own name: ``stft_weight``, ``silence_weight``, ``dc_weight`` (``weights.*``).

        >>> cfg = TrainConfig.from_recipe("vocoder-tiny", max_steps=20)
        >>> cfg.preset, cfg.max_steps, cfg.lr, cfg.disc_width_div, cfg.weights.stft
        ('tiny', 20, 0.001, 16, 15.0)
        """
        path, values = read_recipe(where, RECIPE_FAMILY)
        values = {k: v for k, v in values.items() if k not in RUN_OPTIONS}
        weights = {WEIGHT_FLAGS[k]: values.pop(k) for k in list(values) if k in WEIGHT_FLAGS}
        if weights:
            values["weights"] = {**(values.get("weights") or {}), **weights}
        for key, value in overrides.items():
            if key in ("weights", "mel") and isinstance(value, dict):
                values[key] = {**(values.get(key) or {}), **value}
            else:
                values[key] = value
        return cls.from_dict(values, str(path))


#: ``spiritlm vocoder train`` flags of loss weights -> :class:`LossWeights` field
WEIGHT_FLAGS = {"stft_weight": "stft", "silence_weight": "silence", "dc_weight": "dc"}
#: options of a recipe file that are the run's, not the config's (inputs, outputs, the run rule)
RUN_OPTIONS = ("manifest", "units", "out", "speech_tokenizer", "resume", "stop_after", "overwrite", "allow_skips")


def recipe_defaults(preset: str) -> dict[str, Any]:
    """What ``spiritlm vocoder train`` flags left unset take for ``preset``: ``batch_size``,
    ``segment_units``, ``disc_width_div`` and the loss weights of ``recipes/configs/vocoder-PRESET.yaml``
    (the full discriminator and HiFi-GAN's batch for base sizes; for ``tiny`` also the
    multi-resolution STFT loss at weight 15, see vocoder/README.md).

    >>> recipe_defaults("tiny")["stft_weight"], recipe_defaults("base")["disc_width_div"]
    (15.0, 1)
    """
    _, values = read_recipe(f"vocoder-{preset}", RECIPE_FAMILY, flag="--preset")
    return {k: values[k] for k in ("batch_size", "segment_units", "disc_width_div", "stft_weight", "silence_weight", "dc_weight")}


#: packaged vocoder recipes are ``recipes/configs/vocoder-*.yaml``
RECIPE_FAMILY = "vocoder"


def _upgrade_record(saved: dict[str, Any]) -> dict[str, Any]:
    """A ``train_config.json`` of an older version in this version's keys (``config`` was the preset)."""
    if "config" in saved and "preset" not in saved:
        saved = {("preset" if k == "config" else k): v for k, v in saved.items()}
    return saved


# ---------------------------------------------------------------------------------------------
# Setup
# ---------------------------------------------------------------------------------------------


def tokenizer_sizes(tokenizer: str | None) -> dict[str, int] | None:
    """``{"num_units", "num_pitch", "num_style"}`` from a speech tokenizer directory's config.json."""
    if tokenizer is None:
        return None
    path = os.path.join(tokenizer, "config.json")
    try:
        with open(path) as f:
            meta = json.load(f)
        return {"num_units": int(meta["n_units"]), "num_pitch": int(meta.get("n_pitch", 0)), "num_style": int(meta.get("n_style", 0))}
    except FileNotFoundError:
        raise UserError(f"{path}: not a speech tokenizer directory (--speech_tokenizer)") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{path}: not a speech tokenizer config ({exc}) (--speech_tokenizer)") from None


def _streams_in(units: str) -> set[str]:
    """Which of ``pitch``/``style`` the first parsable line of a units JSONL has."""
    first = next((line.record for line in iter_unit_lines(units, check_streams=False) if line.error is None), None)
    return {k for k in ("pitch", "style") if k in first} if first is not None else set()


def vocoder_config(preset: str, units: str, speakers: list[str], tokenizer: str | None) -> VocoderConfig:
    """The preset with table sizes for this data: the tokenizer's unit/pitch/style counts when
    given (else the preset's, and Meta's 64 / 100 for a stream the preset lacks), one speaker
    entry per manifest speaker."""
    try:
        base = VocoderConfig.preset(preset)
    except ValueError as exc:
        raise UserError(f"{exc} (--preset)") from None
    sizes = tokenizer_sizes(tokenizer)
    streams = _streams_in(units)
    if sizes is None:
        sizes = {"num_units": base.num_units,
                 "num_pitch": (base.num_pitch or DEFAULT_PITCH_CODES) if "pitch" in streams else 0,
                 "num_style": (base.num_style or DEFAULT_STYLE_CODES) if "style" in streams else 0}
    else:
        for name in ("pitch", "style"):
            if sizes[f"num_{name}"] and name not in streams:
                raise UserError(f"{units}: no '{name}' stream, but the tokenizer has one: were the units made by it? (--units / --speech_tokenizer)")
            if not sizes[f"num_{name}"] and name in streams:
                sizes[f"num_{name}"] = 0  # a base tokenizer: ignore extra streams
    return VocoderConfig.preset(preset, num_speakers=len(speakers), **sizes)


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def _f32(x):
    """Casts nested lists of tensors to float32 (losses run outside autocast)."""
    if isinstance(x, (list, tuple)):
        return [_f32(v) for v in x]
    return x.float()


class GeneratorStep(nn.Module):
    """One generator forward for training (a module, so DDP can wrap it).

    ``forward(batch) -> (wav [B, 1, N*640], log_dur_pred [B, K] or None, f0_pred)`` with the
    batch of :func:`spiritlm.vocoder.data.collate` (pitch/style one code per unit). With a
    harmonic source the excitation is made from the segment's own F0 (``batch["f0"]``, teacher
    forcing, so the generator learns to follow the sine from the first step) and ``f0_pred`` is
    the source head's ``(ln F0, voicing logit)`` ``[B, N*8]`` each, trained against that F0 by
    :func:`f0_loss`; otherwise ``f0_pred`` is None.
    """

    def __init__(self, generator: UnitHifiGAN) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, batch: dict[str, torch.Tensor]):
        g = self.generator
        x = g.embed(batch["units"], batch.get("pitch"), batch.get("style"), batch["speaker"], aligned=True)
        f0_pred = None
        if g.source is not None:
            f0_pred = g.predict_f0(x)
            wav = g.vocode(x, f0=batch["f0"])
        else:
            wav = g.vocode(x)
        log_dur = g.predict_durations(batch["dedup"], batch["dedup_lengths"]) if g.duration_predictor is not None else None
        return wav, log_dur, f0_pred


def f0_loss(log_f0: torch.Tensor, logit: torch.Tensor, f0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The harmonic source's losses against the audio's F0 ``[B, F]`` (Hz, 0 = unvoiced):
    ``(MSE of ln F0 over voiced frames, BCE of the voicing logit over all frames)``.

    >>> f0 = torch.tensor([[0.0, 100.0, 200.0]])
    >>> mse, bce = f0_loss(torch.log(torch.tensor([[50.0, 100.0, 200.0]])), torch.tensor([[-20.0, 20.0, 20.0]]), f0)
    >>> round(float(mse), 6), round(float(bce), 6)
    (0.0, 0.0)
    """
    voiced = f0 > 0
    target = torch.log(f0.clamp(min=1.0))
    mse = ((log_f0.float() - target) ** 2)[voiced].mean() if voiced.any() else log_f0.sum() * 0.0
    bce = nn.functional.binary_cross_entropy_with_logits(logit.float(), voiced.float())
    return mse, bce


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------

CKPT_FILES = ("generator.safetensors", "discriminator.safetensors", "optimizers.pt", "rng.pt", "trainer_state.json")


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    m = module.module if hasattr(module, "module") else module
    return {k: v.detach().cpu().contiguous() for k, v in m.state_dict().items()}


def _adopt_legacy_checkpoints(run_dir: Path) -> None:
    """Marks ``COMPLETE`` the checkpoints of older versions, which had no marker: they were renamed
    into place only once every file was written, so a ``step_N`` holding all of them is whole."""
    root = run_dir / CHECKPOINTS_DIR
    for p in root.glob("step_*") if root.is_dir() else ():
        step = checkpoint_step(p)
        if step is not None and not (p / COMPLETE_NAME).exists() and all((p / f).is_file() for f in CKPT_FILES):
            mark_complete(p, step)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The complete ``checkpoints/step_N`` (``COMPLETE`` marker, :mod:`spiritlm.checkpointing`) with the largest N."""
    done = complete_checkpoints(run_dir)
    return done[-1][1] if done else None


def save_checkpoint(run_dir: Path, step: int, generator, discriminator, opt_g, opt_d, sched_g, sched_d,
                    sampler: SegmentSampler, keep: int, log_window: dict[str, list[float]] | None = None) -> Path:
    """Writes ``checkpoints/step_N`` (temporary folder, ``COMPLETE`` last, then renamed into place)
    and only then prunes to the ``keep`` most recent complete ones (0: all): the previous complete
    checkpoint stays until the new one is whole (:mod:`spiritlm.checkpointing`). ``log_window``:
    the metrics logged since the last record (:class:`spiritlm.trainer.LogWindow`), for a resume."""
    from safetensors.torch import save_file

    root = run_dir / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".step_{step}.tmp"
    final = root / f"step_{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(_state(generator), str(tmp / "generator.safetensors"))
    save_file(_state(discriminator), str(tmp / "discriminator.safetensors"))
    torch.save({"generator": opt_g.state_dict(), "discriminator": opt_d.state_dict()}, tmp / "optimizers.pt")
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(rng, tmp / "rng.pt")
    state = {"step": step, "sched_g": sched_g.state_dict(), "sched_d": sched_d.state_dict(), "sampler": sampler.state_dict(),
             "log_window": log_window or {}}
    (tmp / "trainer_state.json").write_text(json.dumps(state))
    for f in tmp.iterdir():  # on disk before the marker says so
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    mark_complete(tmp, step)
    publish_dir(tmp, final)
    prune_checkpoints(run_dir, step, keep)
    return final


def read_checkpoint(ckpt: Path) -> dict[str, Any]:
    """Every file of a checkpoint, read and checked before anything is loaded into the model.

    Raises:
        spiritlm.checkpointing.CheckpointError: naming the first missing, truncated or corrupt file.
    """
    from safetensors.torch import load_file

    def torch_file(p: Path):
        return torch.load(p, map_location="cpu", weights_only=True)

    out: dict[str, Any] = {
        "generator": read_checked(ckpt / "generator.safetensors", lambda p: load_file(str(p))),
        "discriminator": read_checked(ckpt / "discriminator.safetensors", lambda p: load_file(str(p))),
        "optimizers": read_checked(ckpt / "optimizers.pt", torch_file),
        "rng": read_checked(ckpt / "rng.pt", torch_file),
        "trainer": read_checked(ckpt / "trainer_state.json", lambda p: json.loads(p.read_text())),
    }
    for key, name, entries in (("optimizers", "optimizers.pt", ("generator", "discriminator")), ("rng", "rng.pt", ("torch",)),
                               ("trainer", "trainer_state.json", ("step", "sched_g", "sched_d", "sampler"))):
        missing = [e for e in entries if not isinstance(out[key], dict) or e not in out[key]]
        if missing:
            raise CheckpointError(f"{ckpt / name}: no {missing[0]!r} entry")
    out["path"] = ckpt
    return out


def load_checkpoint(ckpt: Path | dict[str, Any], generator, discriminator, opt_g, opt_d, sched_g, sched_d, sampler: SegmentSampler) -> int:
    """Restores everything :func:`save_checkpoint` wrote (a path, or :func:`read_checkpoint`'s
    result); returns the step."""
    c = read_checkpoint(ckpt) if not isinstance(ckpt, dict) else ckpt
    g = generator.module if hasattr(generator, "module") else generator
    d = discriminator.module if hasattr(discriminator, "module") else discriminator
    g.load_state_dict(c["generator"])
    d.load_state_dict(c["discriminator"])
    opt_g.load_state_dict(c["optimizers"]["generator"])
    opt_d.load_state_dict(c["optimizers"]["discriminator"])
    torch.set_rng_state(c["rng"]["torch"])
    if "cuda" in c["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(c["rng"]["cuda"])
    state = c["trainer"]
    sched_g.load_state_dict(state["sched_g"])
    sched_d.load_state_dict(state["sched_d"])
    sampler.load_state_dict(state["sampler"])
    return int(state["step"])


# ---------------------------------------------------------------------------------------------
# The run folder: refuse a finished vocoder, resume an unfinished run of the same settings
# ---------------------------------------------------------------------------------------------

#: the vocoder folder a finished run leaves in OUT (``Vocoder.save``; ``config.json`` written last)
VOCODER_FILES = ("config.json", "model.safetensors")
#: settings a resumed run may change: they do not change what the steps compute
RESUMABLE_CHANGES = ("max_steps", "log_every", "val_every", "save_every", "keep_checkpoints", "num_samples", "max_val_utts", "threads")
#: ``train_config.json`` key -> the ``spiritlm vocoder train`` flag that sets it (messages)
FLAGS = {"weights.stft": "--stft_weight", "weights.silence": "--silence_weight", "weights.dc": "--dc_weight",
         "vocoder": "--speech_tokenizer / --units (the vocoder's table sizes)", "speakers": "--manifest (its speakers)",
         "preset": "--preset", "tokenizer": "--speech_tokenizer"}
#: settings that are flags of ``spiritlm vocoder train`` under their own name
CLI_SETTINGS = ("batch_size", "segment_units", "lr", "disc_width_div", "disc_start_step", "seed", "dtype", "manifest",
                "units", "tokenizer")
#: what a run writes into OUT (removed by ``--overwrite true``; the F0 cache is kept: it is the audio's)
RUN_ENTRIES = ("checkpoints", "samples", "tb", "metrics.jsonl", "metrics.json", "train_config.json", *VOCODER_FILES,
               "speakers.txt", "styles.txt")
#: the trainer rule (:class:`spiritlm.trainer.RunRule`) of a vocoder run folder
RUN_RULE = RunRule(what="a trained vocoder", finished=VOCODER_FILES, record="train_config.json",
                   resumable=(*RESUMABLE_CHANGES, "checkpoint"), flags=FLAGS, settings_flags=CLI_SETTINGS,
                   paths=("manifest", "units", "tokenizer"), whole=("vocoder",), entries=RUN_ENTRIES, upgrade=_upgrade_record)


def is_finished(run_dir: Path) -> bool:
    """True when ``run_dir`` holds a trained vocoder (the files a run writes at ``max_steps``)."""
    return RUN_RULE.is_finished(run_dir)


def check_finished(run_dir: Path, overwrite: bool) -> None:
    """Refuses to train into a folder holding a trained vocoder unless ``overwrite``."""
    RUN_RULE.check_finished(run_dir, overwrite)


def run_difference(saved: dict[str, Any], record: dict[str, Any]) -> str | None:
    """The first setting (a ``train_config.json`` key) that differs between two runs, apart from
    :data:`RESUMABLE_CHANGES`; None when one can resume the other."""
    return RUN_RULE.difference(_upgrade_record(saved), record)


def check_run_dir(run_dir: Path, record: dict[str, Any], overwrite: bool) -> bool:
    """:meth:`spiritlm.trainer.RunRule.check` of a vocoder run: True to start over, False to resume."""
    return RUN_RULE.check(run_dir, record, overwrite)


def clear_run(run_dir: Path) -> None:
    """Removes what an earlier run wrote into ``run_dir`` (:data:`RUN_ENTRIES`; other files stay)."""
    RUN_RULE.clear(run_dir)


# ---------------------------------------------------------------------------------------------
# Validation and samples
# ---------------------------------------------------------------------------------------------


def utterance_inputs(utt: Utterance, device) -> dict[str, torch.Tensor]:
    """Batch-of-one tensors of a whole utterance (pitch/style one code per unit)."""
    d = {"units": torch.from_numpy(utt.units)[None].to(device), "speaker": torch.tensor([utt.speaker], device=device)}
    if utt.pitch is not None:
        d["pitch"] = torch.from_numpy(utt.pitch)[None].to(device)
    if utt.style is not None:
        d["style"] = torch.from_numpy(utt.style)[None].to(device)
    return d


@torch.no_grad()
def resynthesize(generator: UnitHifiGAN, utt: Utterance, device=None) -> np.ndarray:
    """Frame-rate units of a whole utterance → float32 waveform ``(T * 640,)`` (no duration prediction)."""
    device = device or next(generator.parameters()).device
    b = utterance_inputs(utt, device)
    x = generator.embed(b["units"], b.get("pitch"), b.get("style"), b["speaker"], aligned=True)
    return generator.vocode(x)[0, 0].float().cpu().numpy()


@torch.no_grad()
def validate(generator: UnitHifiGAN, utts: list[Utterance], mel_loss: nn.Module, device) -> float:
    """Mean mel L1 (the loss's spectrogram) of whole validation utterances."""
    was = generator.training
    generator.eval()
    vals = []
    for u in utts:
        y_hat = torch.from_numpy(resynthesize(generator, u, device))[None, None]
        vals.append(float(mel_loss(y_hat, torch.from_numpy(u.wav)[None, None])))
    generator.train(was)
    return float(np.mean(vals)) if vals else float("nan")


# ---------------------------------------------------------------------------------------------
# The recipe
# ---------------------------------------------------------------------------------------------


def train_vocoder(
    manifest: str,
    units: str,
    out: str,
    cfg: TrainConfig | None = None,
    *,
    tokenizer: str | None = None,
    resume: bool | None = None,
    stop_after: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
    allow_skips: bool = True,
) -> dict[str, Any]:
    """Trains (or resumes) a vocoder into ``out``; see the module docstring for the outputs.

    The rule of every trainer (:class:`spiritlm.trainer.RunRule`): an ``out`` holding a trained
    vocoder is refused unless ``overwrite``; an unfinished run there (``train_config.json``)
    resumes from its newest readable checkpoint when its settings are this call's (those in
    :data:`RESUMABLE_CHANGES` may differ), and is refused naming the first differing flag
    otherwise; ``overwrite`` starts over (the old run's checkpoints, metrics and vocoder are removed).
    With ``allow_skips=False`` (``spiritlm vocoder train``'s default), units lines that cannot be
    used (skipped and counted) stop it before any training.

    Args:
        manifest: corpus manifest (``speaker`` and ``split`` per line; training uses the lines
            whose split is ``train`` or absent, validation the ``valid`` split, else ``test``).
        units: units JSONL (Meta's format) of the manifest's audio.
        out: run directory.
        cfg: the recipe (default :class:`TrainConfig`; :meth:`TrainConfig.from_recipe` reads a
            ``recipes/configs/vocoder-*.yaml``).
        tokenizer: the speech tokenizer directory that made the units (sizes the tables and
            checks the ids); optional.
        resume: ignored, kept for old scripts: an unfinished run of the same settings always resumes.
        stop_after: stop (with a checkpoint) after this many steps in total, as if interrupted;
            the schedule still assumes ``max_steps``.
        progress: show a tqdm bar (progress lines are ``logging`` records of this module, rank 0:
            :mod:`spiritlm.logs`).
        overwrite: replace a trained vocoder or an unfinished run of other settings in ``out``.

    Returns:
        Summary: ``{"final_step", "train": {step: record}, "val": {step: record}, "seconds",
        "out"}``.
    """
    recipe = VocoderRecipe(manifest, units, out, cfg or TrainConfig(), tokenizer=tokenizer, stop_after=stop_after,
                           progress=progress, overwrite=overwrite, allow_skips=allow_skips)
    try:
        recipe.run()
    finally:
        if recipe.d is not None:
            recipe.d.close()
    return recipe.summary


class VocoderRecipe(Recipe):
    """One vocoder training run (fresh or resumed) on the :class:`spiritlm.trainer.Recipe` skeleton.

    ``setup`` reads the data and checks the run folder before any model exists (a refusal costs
    nothing), then builds the models, optimisers and sampler under the seeds and restores a
    checkpoint; each ``train_step`` is one discriminator and one generator update on a batch of
    random segments; ``validate`` scores whole validation utterances and writes audio samples
    (rank 0); ``finish`` writes the vocoder folder once ``max_steps`` is reached.
    """

    name = "vocoder train"

    def __init__(self, manifest: str, units: str, out: str, cfg: TrainConfig, *, tokenizer: str | None = None,
                 stop_after: int | None = None, progress: bool = True, overwrite: bool = False,
                 allow_skips: bool = True) -> None:
        self.manifest, self.units, self.cfg, self.tokenizer = manifest, units, cfg, tokenizer
        self.cpu_threads = cfg.threads
        self.run_dir = Path(out)
        self.stop_after, self.progress, self.overwrite, self.allow_skips = stop_after, progress, overwrite, allow_skips
        self.summary: dict[str, Any] = {}
        self.d: Dist | None = None
        self.metrics: MetricsLog | None = None

    # -- setup ------------------------------------------------------------------------------

    def setup(self) -> None:
        """Everything before the first step, in the order that keeps runs reproducible."""
        self.t_start = time.time()
        self.d = d = Dist()
        self.main = d.main
        for path, flag in ((self.manifest, "--manifest"), (self.units, "--units")):
            if not os.path.isfile(path):
                raise UserError(f"{path}: file not found ({flag})")
        RUN_RULE.check_finished(self.run_dir, self.overwrite)  # before the data is read: a refusal costs nothing
        self._setup_data()
        self._setup_run_dir()
        if self.vcfg.harmonic_source:
            self._setup_f0()
        self._setup_models()
        self._setup_optimizers()
        resumed = self._resume()
        self.resumed = resumed is not None
        self.metrics = MetricsLog(self.run_dir, d, tensorboard=True)
        self.metrics.start(self.step if self.resumed else None)  # a resume drops the records after its checkpoint
        cfg = self.cfg
        self.use_bf16 = cfg.dtype == "bfloat16" or (cfg.dtype == "auto" and d.device.type == "cuda")
        end = cfg.max_steps if self.stop_after is None else min(cfg.max_steps, self.stop_after)
        self.schedule = Schedule(max_steps=cfg.max_steps, end=end, log_every=cfg.log_every, val_every=cfg.val_every,
                                 save_every=cfg.save_every)

    def _setup_data(self) -> None:
        """Speakers, the vocoder's config for this data, training and validation utterances."""
        cfg, units = self.cfg, self.units
        self.speakers = speakers = read_speakers(self.manifest)
        vcfg = vocoder_config(cfg.preset, units, speakers, self.tokenizer)
        sizes = {"num_units": vcfg.num_units, "num_pitch": vcfg.num_pitch, "num_style": vcfg.num_style}
        self.train_utts, report = load_utterances(self.manifest, units, splits=["train", None], speakers=speakers,
                                                  check_every_line=True, **sizes)
        for e in report.errors[:20]:
            self.log(f"skipped {e}")
        if report.skipped > 20:
            self.log(f"... and {report.skipped - 20} more skipped lines")
        if report.skipped and not self.allow_skips:  # the one rule of batch commands (spiritlm tokenize, vocoder synth)
            raise UserError(f"{units}: {report.skipped} units lines skipped (first: {report.errors[0]}); "
                            "pass --allow_skips true to train without them")
        self.val_utts = self._validation_utterances(sizes)
        self.log(f"{len(self.train_utts)} training utterances ({report.skipped} lines skipped), {len(self.val_utts)} for validation, "
                 f"{len(speakers)} speakers; streams: units{' + pitch' if vcfg.num_pitch else ''}{' + style' if vcfg.num_style else ''}")
        # stored with the vocoder: the codes filled in for inputs without a pitch/style stream
        common = most_frequent_codes(self.train_utts)
        self.vcfg = dataclasses.replace(vcfg, default_pitch=common.get("pitch") if vcfg.num_pitch else None,
                                        default_style=common.get("style") if vcfg.num_style else None)

    def _validation_utterances(self, sizes: dict[str, int]) -> list[Utterance]:
        """The ``valid`` split's first ``max_val_utts`` utterances, else the ``test`` split's, else none."""
        for split in ("valid", "test"):
            try:
                utts, _ = load_utterances(self.manifest, self.units, splits=[split], speakers=self.speakers,
                                          max_utts=self.cfg.max_val_utts, **sizes)
                return utts
            except UserError:
                continue
        return []

    def _setup_run_dir(self) -> None:
        """Refuses, resumes or starts over (:data:`RUN_RULE`), then writes ``train_config.json``."""
        tokenizer = self.tokenizer
        record = {**self.cfg.to_dict(), "vocoder": self.vcfg.to_dict(), "manifest": os.path.abspath(self.manifest),
                  "units": os.path.abspath(self.units), "tokenizer": os.path.abspath(tokenizer) if tokenizer else None,
                  "speakers": self.speakers}
        self.fresh = RUN_RULE.check(self.run_dir, record, self.overwrite)
        if self.d.main:  # only once the data is usable: a failed start leaves no half-made run folder
            if self.fresh:
                RUN_RULE.clear(self.run_dir)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            _write_json(self.run_dir / "train_config.json", record)
        self.d.barrier()

    def _setup_f0(self) -> None:
        """The harmonic source's targets and excitation: the training audio's F0 (cached in OUT)."""
        d, run_dir, t_f0 = self.d, self.run_dir, time.time()
        cache = run_dir / f"f0_cache.rank{d.rank}.npz" if d.world_size > 1 else run_dir / "f0_cache.npz"
        n = attach_f0(self.train_utts, cache, progress=self.progress and d.main)
        self.log(f"F0 of {len(self.train_utts)} training utterances ({n} computed, {len(self.train_utts) - n} cached) "
                 f"in {time.time() - t_f0:.0f} s")

    def _setup_models(self) -> None:
        """Generator, discriminator and losses under the seeds; DDP wrappers with several processes."""
        cfg, d = self.cfg, self.d
        torch.manual_seed(cfg.seed)  # same seed -> same initial generator (the untrained baseline of the eval)
        self.generator = UnitHifiGAN(self.vcfg).to(d.device)
        self.discriminator = build_discriminator(cfg.disc_width_div).to(d.device)
        torch.manual_seed(cfg.seed + 1000 * d.rank)  # dropout differs by rank
        self.g_loss, self.d_loss, fm_weight = build_losses(self.discriminator, cfg.weights, cfg.mel, self.vcfg.sample_rate,
                                                           self.vcfg.duration_predictor)
        self.log(f"generator {num_parameters(self.generator) / 1e6:.2f} M parameters ({cfg.preset}), discriminator "
                 f"{num_parameters(self.discriminator) / 1e6:.2f} M (width / {cfg.disc_width_div}); feature-matching weight {fm_weight:g}")
        self.step_module: nn.Module = GeneratorStep(self.generator)
        self.disc: nn.Module = self.discriminator
        if d.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [d.device.index] if d.device.type == "cuda" else None
            self.step_module = DDP(self.step_module, device_ids=ids)
            self.disc = DDP(self.discriminator, device_ids=ids)

    def _setup_optimizers(self) -> None:
        """AdamW and an exponential decay for each network; the segment sampler (its own seed)."""
        cfg, d = self.cfg, self.d
        self.opt_g = torch.optim.AdamW(self.generator.parameters(), lr=cfg.lr, betas=tuple(cfg.betas))
        self.opt_d = torch.optim.AdamW(self.discriminator.parameters(), lr=cfg.lr, betas=tuple(cfg.betas))
        self.sched_g = torch.optim.lr_scheduler.ExponentialLR(self.opt_g, gamma=cfg.lr_decay)
        self.sched_d = torch.optim.lr_scheduler.ExponentialLR(self.opt_d, gamma=cfg.lr_decay)
        self.sampler = SegmentSampler(self.train_utts, cfg.batch_size, cfg.segment_units, seed=cfg.seed, rank=d.rank,
                                      world_size=d.world_size)

    def _resume(self) -> dict[str, Any] | None:
        """Restores the newest readable checkpoint of an unfinished run (its weights, optimisers,
        schedulers, RNG, sampler position and log window); None for a fresh run."""
        d, run_dir = self.d, self.run_dir
        self.step, self.window = 0, LogWindow()
        if d.main:
            _adopt_legacy_checkpoints(run_dir)
        d.barrier()
        ckpt = None if self.fresh else find_resume_point(run_dir, read_checkpoint, d, "vocoder train")
        if ckpt is None:
            if d.main:
                (run_dir / "metrics.json").unlink(missing_ok=True)
            return None
        try:
            self.step = load_checkpoint(ckpt, self.generator, self.discriminator, self.opt_g, self.opt_d, self.sched_g,
                                        self.sched_d, self.sampler)
        except (RuntimeError, ValueError, KeyError) as exc:  # files that read but do not fit this model
            reason = " ".join(str(exc).split())[:200]
            raise UserError(f"{ckpt['path']}: does not fit this run ({reason}); pass --overwrite true to start over (--out)") from None
        self.window = LogWindow.from_state(ckpt["trainer"].get("log_window"))
        self.log(f"resumed from {ckpt['path']} (step {self.step})")
        return ckpt

    # -- the loop ---------------------------------------------------------------------------

    def on_train_start(self) -> None:
        self.t0, self.steps_here = time.perf_counter(), 0
        self.cpu0, self.cpu_steps = time.process_time(), 0
        self.generator.train()
        self.discriminator.train()

    def train_step(self) -> None:
        """One discriminator update (from ``disc_start_step``) and one generator update."""
        cfg, d, step = self.cfg, self.d, self.step
        batch = {k: v.to(d.device) for k, v in self.sampler.next_batch().items()}
        y = batch["audio"]
        with _autocast(d.device, self.use_bf16):
            y_hat, log_dur, f0_pred = self.step_module(batch)
        y_hat = y_hat.float()
        mask = batch["durations"] > 0
        dur_args = (log_dur.float()[mask] if log_dur is not None else None, torch.log1p(batch["durations"].float())[mask])
        if step >= cfg.disc_start_step:
            loss_d = self._discriminator_step(y, y_hat)
            loss_g = self._adversarial_losses(y, y_hat, dur_args)
        else:  # warm-up on the mel and duration losses only (no discriminator)
            loss_d = {}
            loss_g = self.g_loss(Stage.TRAIN, y_hat, y, None, None, None, *dur_args)
        if f0_pred is not None:
            loss_g["G_f0_mse"], loss_g["G_vuv_bce"] = f0_loss(*f0_pred, batch["f0"])
            loss_g["G_loss"] = loss_g["G_loss"] + cfg.weights.f0 * (loss_g["G_f0_mse"] + loss_g["G_vuv_bce"])
        if cfg.weights.silence or cfg.weights.dc:  # issue 17: quiet, DC-free pauses (losses.silence_loss)
            loss_g["G_silence"], loss_g["G_dc"] = silence_loss(y_hat, y)
            loss_g["G_loss"] = loss_g["G_loss"] + cfg.weights.silence * loss_g["G_silence"] + cfg.weights.dc * loss_g["G_dc"]
        self.opt_g.zero_grad(set_to_none=True)
        loss_g["G_loss"].backward()
        self.opt_g.step()
        self.steps_here += 1
        self.cpu_steps += 1
        if (step + 1) % cfg.decay_every == 0:
            self.sched_g.step()
            self.sched_d.step()
        rec = {"loss_g": loss_g["G_loss"], "mel_l1": loss_g["G_l1_spec_loss"]}
        for name, key in LOGGED_LOSSES:
            if key in loss_g or key in loss_d:
                rec[name] = loss_g.get(key, loss_d.get(key))
        self.window.add({k: v.detach() for k, v in rec.items()})

    def _discriminator_step(self, y: torch.Tensor, y_hat: torch.Tensor) -> dict[str, torch.Tensor]:
        """LSGAN update of the discriminators: real -> 1, generated (detached) -> 0, in one pass over [real; generated]."""
        B = y.size(0)
        with _autocast(self.d.device, self.use_bf16):
            scores, _ = self.disc(torch.cat([y, y_hat.detach()]))
        scores = _f32(scores)
        loss_d = self.d_loss([s[B:] for s in scores], [s[:B] for s in scores])
        self.opt_d.zero_grad(set_to_none=True)
        loss_d["D_loss"].backward()
        self.opt_d.step()
        return loss_d

    def _adversarial_losses(self, y: torch.Tensor, y_hat: torch.Tensor, dur_args: tuple) -> dict[str, torch.Tensor]:
        """The generator's losses against the updated discriminators (real feature maps are targets: detached)."""
        B = y.size(0)
        with _autocast(self.d.device, self.use_bf16):
            scores, feats = self.disc(torch.cat([y, y_hat]))
        scores, feats = _f32(scores), _f32(feats)
        feats_real = [[f[:B].detach() for f in fs] for fs in feats]
        return self.g_loss(Stage.TRAIN, y_hat, y, [s[B:] for s in scores], [[f[B:] for f in fs] for fs in feats], feats_real, *dur_args)

    def log_train(self) -> None:
        values = self.window.means()
        values["lr"] = self.sched_g.get_last_lr()[0]
        values["steps_per_s"] = self.steps_here / max(time.perf_counter() - self.t0, 1e-9)
        # CPU seconds of this process per step since the last record: the cost on a shared machine
        values["cpu_s_per_step"] = (time.process_time() - self.cpu0) / max(self.cpu_steps, 1)
        self.cpu0, self.cpu_steps = time.process_time(), 0
        self.metrics.record("train", self.step, values)
        if self.bar is not None:
            post = {"mel": f"{values['mel_l1']:.3f}", "g": f"{values['loss_g']:.2f}"}
            if "loss_d" in values:
                post["d"] = f"{values['loss_d']:.2f}"
            self.bar.set_postfix(post)
        self.window.clear()

    def validate(self) -> None:
        """Mel L1 of whole validation utterances and ``samples/step_N/*.wav`` (rank 0 only)."""
        if not (self.d.main and self.val_utts):
            return
        from ..audio import save_wav

        generator, step, sr = self.generator, self.step, self.vcfg.sample_rate
        val = validate(generator, self.val_utts, self.g_loss.l1_spec_loss, self.d.device)
        self.metrics.record("val", step, {"mel_l1": val})
        self.log(f"step {step}: validation mel L1 {val:.4f}")
        generator.eval()
        for u in self.val_utts[: self.cfg.num_samples]:
            wav = resynthesize(generator, u, self.d.device)
            save_wav(self.run_dir / "samples" / f"step_{step}" / f"{u.id}.wav", np.clip(wav, -1, 1), sr)
            self.metrics.audio(f"samples/{u.id}", wav, step, sr)
        generator.train()

    def save_checkpoint(self) -> Path | None:
        """``checkpoints/step_N`` (rank 0), with the log window; every rank waits for it."""
        path = None
        if self.d.main:
            path = save_checkpoint(self.run_dir, self.step, self.generator, self.discriminator, self.opt_g, self.opt_d,
                                   self.sched_g, self.sched_d, self.sampler, self.cfg.keep_checkpoints, log_window=self.window.state())
        self.d.barrier()
        return path

    # -- the end ----------------------------------------------------------------------------

    def finish(self) -> None:
        """The vocoder folder in OUT once ``max_steps`` is reached."""
        if self.d.main and self.step >= self.cfg.max_steps:
            save_trained_vocoder(self.generator, self.speakers, self.run_dir)
            self.log(f"vocoder written to {self.run_dir} (load with Vocoder.from_pretrained)")
        summary: dict[str, Any] = {"final_step": self.step, "out": str(self.run_dir), "seconds": round(time.time() - self.t_start, 1)}
        if self.d.main:
            summary.update(read_history(self.run_dir / "metrics.jsonl"))
            _write_json(self.run_dir / "metrics.json", {k: v for k, v in summary.items() if k != "out"})
        self.summary = summary

    def cleanup(self) -> None:
        """Closes the metrics log (the process group is closed by :func:`train_vocoder`, also on errors)."""
        if self.metrics is not None:
            self.metrics.close()


#: ``metrics.jsonl`` name -> speechbrain's loss key, logged when the step computed it
LOGGED_LOSSES = (("loss_d", "D_loss"), ("adv", "G_mse_fake_loss"), ("feat_match", "G_feat_match_loss"), ("dur_mse", "G_dur_loss"),
                 ("stft_mag", "G_stft_loss_mg"), ("stft_sc", "G_stft_loss_sc"), ("f0_mse", "G_f0_mse"), ("vuv_bce", "G_vuv_bce"),
                 ("silence", "G_silence"), ("dc", "G_dc"))


def save_trained_vocoder(generator: UnitHifiGAN, speakers: list[str], out: Path) -> None:
    """The trained generator in the vocoder folder format (:meth:`spiritlm.vocoder.Vocoder.save`)."""
    from .api import Vocoder

    g = copy.deepcopy(generator).cpu().eval()
    Vocoder(g, speakers=speakers).save(out)


def _write_json(path: Path, obj) -> None:
    with atomic_file(path) as f:
        f.write(json.dumps(obj, indent=1) + "\n")


def checkpoint_to_vocoder(run_dir: str | os.PathLike, checkpoint: str | os.PathLike, out: str | os.PathLike) -> None:
    """Writes the generator of a training checkpoint (``run_dir/checkpoints/step_N`` or a copy of
    it) as a vocoder folder ``out``, with the run's config and speakers (``train_config.json``)."""
    from safetensors.torch import load_file

    meta = json.loads((Path(run_dir) / "train_config.json").read_text())
    generator = UnitHifiGAN(VocoderConfig.from_dict(meta["vocoder"]))
    generator.load_state_dict(load_file(str(Path(checkpoint) / "generator.safetensors")))
    save_trained_vocoder(generator, meta["speakers"], Path(out))
    _write_json(Path(out) / "train_config.json", {**meta, "checkpoint": str(checkpoint)})
