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

The run folder follows the rule of every trainer (:func:`check_run_dir`): rerunning an interrupted
run with the same settings resumes it (and reproduces the uninterrupted run exactly on CPU); a
folder holding a trained vocoder, or an unfinished run of other settings, is refused unless
``overwrite``.

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
from typing import Any, Callable

import numpy as np
import torch
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
from ..errors import UserError
from ..metrics_log import MetricsLog, read_history
from spiritlm.distributed import Dist
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
        config: vocoder preset (``tiny``, ``base``, ``expressive``); table sizes are then set from
            the tokenizer (or the data) and the manifest's speakers.
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
        threads: torch CPU threads (0 = torch's default).
        dtype: ``auto`` (bfloat16 autocast on GPU, float32 on CPU), ``float32`` or ``bfloat16``.
    """

    config: str = "tiny"
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


def recipe_defaults(config: str) -> dict[str, Any]:
    """Per-preset defaults of :class:`TrainConfig` (the full discriminator and HiFi-GAN's batch for
    base sizes; for ``tiny`` also the multi-resolution STFT loss at weight 15, see vocoder/README.md)."""
    if config == "tiny":
        return {"disc_width_div": 16, "batch_size": 8, "segment_units": 12, "stft_weight": 15.0, "silence_weight": 0.0, "dc_weight": 0.0}
    return {"disc_width_div": 1, "batch_size": 16, "segment_units": 14, "stft_weight": 0.0, "silence_weight": 0.0, "dc_weight": 0.0}


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
    with open(units) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and "hubert" in rec:
                return {k for k in ("pitch", "style") if k in rec}
    return set()


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
                    sampler: SegmentSampler, keep: int) -> Path:
    """Writes ``checkpoints/step_N`` (temporary folder, ``COMPLETE`` last, then renamed into place)
    and only then prunes to the ``keep`` most recent complete ones (0: all): the previous complete
    checkpoint stays until the new one is whole (:mod:`spiritlm.checkpointing`)."""
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
    state = {"step": step, "sched_g": sched_g.state_dict(), "sched_d": sched_d.state_dict(), "sampler": sampler.state_dict()}
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
         "config": "--preset", "tokenizer": "--speech_tokenizer"}
#: settings that are flags of ``spiritlm vocoder train`` under their own name
CLI_SETTINGS = ("config", "batch_size", "segment_units", "lr", "disc_width_div", "disc_start_step", "seed", "dtype", "manifest",
                "units", "tokenizer")
#: what a run writes into OUT (removed by ``--overwrite true``; the F0 cache is kept: it is the audio's)
RUN_ENTRIES = ("checkpoints", "samples", "tb", "metrics.jsonl", "metrics.json", "train_config.json", *VOCODER_FILES,
               "speakers.txt", "styles.txt")


def is_finished(run_dir: Path) -> bool:
    """True when ``run_dir`` holds a trained vocoder (the files a run writes at ``max_steps``)."""
    return all((run_dir / f).is_file() for f in VOCODER_FILES)


def check_finished(run_dir: Path, overwrite: bool) -> None:
    """Refuses to train into a folder holding a trained vocoder unless ``overwrite``."""
    if is_finished(run_dir) and not overwrite:
        raise UserError(f"{run_dir}: holds a trained vocoder ({', '.join(VOCODER_FILES)}); pass --overwrite true to train a "
                        "new one in its place, or choose another --out")


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "vocoder":
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def run_difference(saved: dict[str, Any], record: dict[str, Any]) -> str | None:
    """The first setting (a ``train_config.json`` key) that differs between two runs, apart from
    :data:`RESUMABLE_CHANGES`; None when one can resume the other."""
    a, b = _flatten(json.loads(json.dumps(saved))), _flatten(json.loads(json.dumps(record)))
    for key in sorted(set(a) | set(b)):
        if key in RESUMABLE_CHANGES or key == "checkpoint":
            continue
        x, y = a.get(key), b.get(key)
        if key in ("manifest", "units", "tokenizer") and x and y:
            x, y = os.path.abspath(x), os.path.abspath(y)
        if x != y:
            return key
    return None


def check_run_dir(run_dir: Path, record: dict[str, Any], overwrite: bool) -> bool:
    """Decides what a run does with ``run_dir``; returns True when it must start over (``overwrite``
    on an existing run: :func:`clear_run`), False to resume (or start in a new folder).

    Raises:
        UserError: an unfinished run of other settings (naming the first differing flag) or an
            unreadable ``train_config.json``, without ``overwrite``.
    """
    saved_file = run_dir / "train_config.json"
    if overwrite:
        return saved_file.is_file() or is_finished(run_dir) or (run_dir / CHECKPOINTS_DIR).is_dir()
    if not saved_file.is_file():
        return False
    try:
        saved = json.loads(saved_file.read_text())
        if not isinstance(saved, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        raise UserError(f"{saved_file}: unreadable ({' '.join(str(exc).split())[:120]}); pass --overwrite true to start over (--out)") from None
    key = run_difference(saved, record)
    if key is None:
        return False
    flag = FLAGS.get(key, f"--{key}" if key in CLI_SETTINGS else f"the recipe's {key}")
    was, now = (json.dumps(_flatten(json.loads(json.dumps(r))).get(key))[:60] for r in (saved, record))
    raise UserError(
        f"{saved_file}: an unfinished run with {key} {was}, this command has {now} ({flag}): rerun with the run's "
        "settings to resume it, or pass --overwrite true to start over (its checkpoints are deleted)"
    )


def clear_run(run_dir: Path) -> None:
    """Removes what an earlier run wrote into ``run_dir`` (:data:`RUN_ENTRIES`; other files stay)."""
    for name in RUN_ENTRIES:
        p = run_dir / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


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
# The loop
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
    log: Callable[[str], None] | None = None,
    overwrite: bool = False,
    allow_skips: bool = True,
) -> dict[str, Any]:
    """Trains (or resumes) a vocoder into ``out``; see the module docstring for the outputs.

    The rule of every trainer (:func:`check_run_dir`): an ``out`` holding a trained vocoder is
    refused unless ``overwrite``; an unfinished run there (``train_config.json``) resumes from its
    newest readable checkpoint when its settings are this call's (those in
    :data:`RESUMABLE_CHANGES` may differ), and is refused naming the first differing flag
    otherwise; ``overwrite`` starts over (the old run's checkpoints, metrics and vocoder are removed).
    With ``allow_skips=False`` (``spiritlm vocoder train``'s default), units lines that cannot be
    used (skipped and counted) stop it before any training.

    Args:
        manifest: corpus manifest (``speaker`` and ``split`` per line; training uses the lines
            whose split is ``train`` or absent, validation the ``valid`` split, else ``test``).
        units: units JSONL (Meta's format) of the manifest's audio.
        out: run directory.
        cfg: the recipe (default :class:`TrainConfig`).
        tokenizer: the speech tokenizer directory that made the units (sizes the tables and
            checks the ids); optional.
        resume: ignored, kept for old scripts: an unfinished run of the same settings always resumes.
        stop_after: stop (with a checkpoint) after this many steps in total, as if interrupted;
            the schedule still assumes ``max_steps``.
        progress: show a tqdm bar.
        log: line logger (default: print on rank 0).
        overwrite: replace a trained vocoder or an unfinished run of other settings in ``out``.

    Returns:
        Summary: ``{"final_step", "train": {step: record}, "val": {step: record}, "seconds",
        "out"}``.
    """
    cfg = cfg or TrainConfig()
    d = Dist()
    log = log or (lambda s: print(f"[vocoder train] {s}", flush=True) if d.main else None)
    prev_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _train(manifest, units, out, cfg, tokenizer, overwrite, stop_after, progress, log, d, allow_skips)
    finally:
        torch.set_num_threads(prev_threads)
        d.close()


def _train(manifest, units, out, cfg: TrainConfig, tokenizer, overwrite, stop_after, progress, log, d: Dist,
           allow_skips: bool = True) -> dict[str, Any]:
    from speechbrain import Stage

    t_start = time.time()
    run_dir = Path(out)
    for path, flag in ((manifest, "--manifest"), (units, "--units")):
        if not os.path.isfile(path):
            raise UserError(f"{path}: file not found ({flag})")
    check_finished(run_dir, overwrite)  # before the data is read: a refusal costs nothing
    speakers = read_speakers(manifest)
    vcfg = vocoder_config(cfg.config, units, speakers, tokenizer)
    sizes = {"num_units": vcfg.num_units, "num_pitch": vcfg.num_pitch, "num_style": vcfg.num_style}
    train_utts, report = load_utterances(manifest, units, splits=["train", None], speakers=speakers, check_every_line=True, **sizes)
    for e in report.errors[:20]:
        log(f"skipped {e}")
    if report.skipped > 20:
        log(f"... and {report.skipped - 20} more skipped lines")
    if report.skipped and not allow_skips:  # the one rule of batch commands (spiritlm tokenize, vocoder synth)
        raise UserError(f"{units}: {report.skipped} units lines skipped (first: {report.errors[0]}); "
                        "pass --allow_skips true to train without them")
    try:
        val_utts, _ = load_utterances(manifest, units, splits=["valid"], speakers=speakers, max_utts=cfg.max_val_utts, **sizes)
    except UserError:
        try:
            val_utts, _ = load_utterances(manifest, units, splits=["test"], speakers=speakers, max_utts=cfg.max_val_utts, **sizes)
        except UserError:
            val_utts = []
    log(f"{len(train_utts)} training utterances ({report.skipped} lines skipped), {len(val_utts)} for validation, "
        f"{len(speakers)} speakers; streams: units{' + pitch' if vcfg.num_pitch else ''}{' + style' if vcfg.num_style else ''}")
    # stored with the vocoder: the codes filled in for inputs without a pitch/style stream
    common = most_frequent_codes(train_utts)
    vcfg = dataclasses.replace(vcfg, default_pitch=common.get("pitch") if vcfg.num_pitch else None,
                               default_style=common.get("style") if vcfg.num_style else None)
    record = {**cfg.to_dict(), "vocoder": vcfg.to_dict(), "manifest": os.path.abspath(manifest), "units": os.path.abspath(units),
              "tokenizer": os.path.abspath(tokenizer) if tokenizer else None, "speakers": speakers}
    fresh = check_run_dir(run_dir, record, overwrite)
    if d.main:  # only once the data is usable: a failed start leaves no half-made run folder
        if fresh:
            clear_run(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_json(run_dir / "train_config.json", record)
    d.barrier()
    if vcfg.harmonic_source:  # the source's targets and excitation: the training audio's F0 (cached in OUT)
        t_f0 = time.time()
        n = attach_f0(train_utts, run_dir / f"f0_cache.rank{d.rank}.npz" if d.world_size > 1 else run_dir / "f0_cache.npz",
                      progress=progress and d.main)
        log(f"F0 of {len(train_utts)} training utterances ({n} computed, {len(train_utts) - n} cached) in {time.time() - t_f0:.0f} s")

    torch.manual_seed(cfg.seed)  # same seed -> same initial generator (the untrained baseline of the eval)
    generator = UnitHifiGAN(vcfg).to(d.device)
    discriminator = build_discriminator(cfg.disc_width_div).to(d.device)
    torch.manual_seed(cfg.seed + 1000 * d.rank)  # dropout differs by rank
    g_loss, d_loss, fm_weight = build_losses(discriminator, cfg.weights, cfg.mel, vcfg.sample_rate, vcfg.duration_predictor)
    log(f"generator {num_parameters(generator) / 1e6:.2f} M parameters ({cfg.config}), discriminator "
        f"{num_parameters(discriminator) / 1e6:.2f} M (width / {cfg.disc_width_div}); feature-matching weight {fm_weight:g}")

    step_module: nn.Module = GeneratorStep(generator)
    disc: nn.Module = discriminator
    if d.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [d.device.index] if d.device.type == "cuda" else None
        step_module = DDP(step_module, device_ids=ids)
        disc = DDP(discriminator, device_ids=ids)
    opt_g = torch.optim.AdamW(generator.parameters(), lr=cfg.lr, betas=tuple(cfg.betas))
    opt_d = torch.optim.AdamW(discriminator.parameters(), lr=cfg.lr, betas=tuple(cfg.betas))
    sched_g = torch.optim.lr_scheduler.ExponentialLR(opt_g, gamma=cfg.lr_decay)
    sched_d = torch.optim.lr_scheduler.ExponentialLR(opt_d, gamma=cfg.lr_decay)
    sampler = SegmentSampler(train_utts, cfg.batch_size, cfg.segment_units, seed=cfg.seed, rank=d.rank, world_size=d.world_size)

    step = 0
    if d.main:
        _adopt_legacy_checkpoints(run_dir)
    d.barrier()
    ckpt = None if fresh else find_resume_point(run_dir, read_checkpoint, d, "vocoder train")
    if ckpt is not None:
        try:
            step = load_checkpoint(ckpt, generator, discriminator, opt_g, opt_d, sched_g, sched_d, sampler)
        except (RuntimeError, ValueError, KeyError) as exc:  # files that read but do not fit this model
            reason = " ".join(str(exc).split())[:200]
            raise UserError(f"{ckpt['path']}: does not fit this run ({reason}); pass --overwrite true to start over (--out)") from None
        log(f"resumed from {ckpt['path']} (step {step})")
    elif d.main:
        (run_dir / "metrics.json").unlink(missing_ok=True)
    logger = MetricsLog(run_dir, d, tensorboard=True)
    logger.start(step if ckpt is not None else None)  # a resume drops the records after its checkpoint
    use_bf16 = cfg.dtype == "bfloat16" or (cfg.dtype == "auto" and d.device.type == "cuda")
    end = cfg.max_steps if stop_after is None else min(cfg.max_steps, stop_after)

    bar = None
    if progress and d.main and step < end:
        from tqdm.auto import tqdm

        bar = tqdm(total=end, initial=step, desc="vocoder train", unit="step", dynamic_ncols=True)
    window: dict[str, list[float]] = {}
    t0, steps_here = time.perf_counter(), 0
    cpu0, cpu_steps = time.process_time(), 0
    generator.train()
    discriminator.train()
    while step < end:
        batch = {k: v.to(d.device) for k, v in sampler.next_batch().items()}
        y = batch["audio"]
        with _autocast(d.device, use_bf16):
            y_hat, log_dur, f0_pred = step_module(batch)
        y_hat = y_hat.float()

        B = y.size(0)
        mask = batch["durations"] > 0
        dur_args = (log_dur.float()[mask] if log_dur is not None else None, torch.log1p(batch["durations"].float())[mask])
        if step >= cfg.disc_start_step:
            # discriminator: real -> 1, generated (detached) -> 0; one pass over [real; generated]
            with _autocast(d.device, use_bf16):
                scores, _ = disc(torch.cat([y, y_hat.detach()]))
            scores = _f32(scores)
            loss_d = d_loss([s[B:] for s in scores], [s[:B] for s in scores])
            opt_d.zero_grad(set_to_none=True)
            loss_d["D_loss"].backward()
            opt_d.step()

            # generator, against the updated discriminator (real feature maps are targets: detached)
            with _autocast(d.device, use_bf16):
                scores, feats = disc(torch.cat([y, y_hat]))
            scores, feats = _f32(scores), _f32(feats)
            feats_real = [[f[:B].detach() for f in fs] for fs in feats]
            loss_g = g_loss(Stage.TRAIN, y_hat, y, [s[B:] for s in scores], [[f[B:] for f in fs] for fs in feats], feats_real, *dur_args)
        else:  # warm-up on the mel and duration losses only (no discriminator)
            loss_d = {}
            loss_g = g_loss(Stage.TRAIN, y_hat, y, None, None, None, *dur_args)
        if f0_pred is not None:
            loss_g["G_f0_mse"], loss_g["G_vuv_bce"] = f0_loss(*f0_pred, batch["f0"])
            loss_g["G_loss"] = loss_g["G_loss"] + cfg.weights.f0 * (loss_g["G_f0_mse"] + loss_g["G_vuv_bce"])
        if cfg.weights.silence or cfg.weights.dc:  # issue 17: quiet, DC-free pauses (losses.silence_loss)
            loss_g["G_silence"], loss_g["G_dc"] = silence_loss(y_hat, y)
            loss_g["G_loss"] = loss_g["G_loss"] + cfg.weights.silence * loss_g["G_silence"] + cfg.weights.dc * loss_g["G_dc"]
        opt_g.zero_grad(set_to_none=True)
        loss_g["G_loss"].backward()
        opt_g.step()
        step += 1
        steps_here += 1
        cpu_steps += 1
        if step % cfg.decay_every == 0:
            sched_g.step()
            sched_d.step()
        if bar is not None:
            bar.update(1)

        rec = {"loss_g": loss_g["G_loss"], "mel_l1": loss_g["G_l1_spec_loss"]}
        for name, key in (("loss_d", "D_loss"), ("adv", "G_mse_fake_loss"), ("feat_match", "G_feat_match_loss"), ("dur_mse", "G_dur_loss"),
                          ("stft_mag", "G_stft_loss_mg"), ("stft_sc", "G_stft_loss_sc"), ("f0_mse", "G_f0_mse"),
                          ("vuv_bce", "G_vuv_bce"), ("silence", "G_silence"), ("dc", "G_dc")):
            if key in loss_g or key in loss_d:
                rec[name] = loss_g.get(key, loss_d.get(key))
        for k, v in rec.items():
            window.setdefault(k, []).append(float(v.detach()))

        if step % cfg.log_every == 0 or step == end:
            values = {k: float(np.mean(v)) for k, v in window.items()}
            values["lr"] = sched_g.get_last_lr()[0]
            values["steps_per_s"] = steps_here / max(time.perf_counter() - t0, 1e-9)
            # CPU seconds of this process per step since the last record: the cost on a shared machine
            values["cpu_s_per_step"] = (time.process_time() - cpu0) / max(cpu_steps, 1)
            cpu0, cpu_steps = time.process_time(), 0
            logger.record("train", step, values)
            if bar is not None:
                post = {"mel": f"{values['mel_l1']:.3f}", "g": f"{values['loss_g']:.2f}"}
                if "loss_d" in values:
                    post["d"] = f"{values['loss_d']:.2f}"
                bar.set_postfix(post)
            window = {}

        if d.main and val_utts and ((cfg.val_every and step % cfg.val_every == 0) or step == cfg.max_steps):
            _validate_and_sample(generator, val_utts, g_loss.l1_spec_loss, d.device, run_dir, step, cfg, logger, vcfg.sample_rate, log)

        if (cfg.save_every and step % cfg.save_every == 0) or step == end:
            if d.main:
                save_checkpoint(run_dir, step, generator, discriminator, opt_g, opt_d, sched_g, sched_d, sampler, cfg.keep_checkpoints)
            d.barrier()

    if bar is not None:
        bar.close()
    if d.main and step >= cfg.max_steps:
        save_trained_vocoder(generator, speakers, run_dir)
        log(f"vocoder written to {run_dir} (load with Vocoder.from_pretrained)")
    summary: dict[str, Any] = {"final_step": step, "out": str(run_dir), "seconds": round(time.time() - t_start, 1)}
    if d.main:
        summary.update(read_history(run_dir / "metrics.jsonl"))
        _write_json(run_dir / "metrics.json", {k: v for k, v in summary.items() if k != "out"})
    logger.close()
    return summary


def _validate_and_sample(generator, val_utts, mel_loss, device, run_dir: Path, step: int, cfg: TrainConfig, logger, sr, log) -> None:
    from ..audio import save_wav

    val = validate(generator, val_utts, mel_loss, device)
    logger.record("val", step, {"mel_l1": val})
    log(f"step {step}: validation mel L1 {val:.4f}")
    generator.eval()
    for u in val_utts[: cfg.num_samples]:
        wav = resynthesize(generator, u, device)
        save_wav(run_dir / "samples" / f"step_{step}" / f"{u.id}.wav", np.clip(wav, -1, 1), sr)
        logger.audio(f"samples/{u.id}", wav, step, sr)
    generator.train()


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
