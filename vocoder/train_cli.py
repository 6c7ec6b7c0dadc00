"""``spiritlm vocoder train`` and ``spiritlm vocoder eval``: thin commands over :mod:`.train` and :mod:`.evaluate` (imported when run)."""

from __future__ import annotations

import os
from typing import Literal

from jsonargparse.typing import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt

from spiritlm.errors import UserError


def _check_files(**paths: str) -> None:
    """One-line UserError for an input file that does not exist (before the slow imports)."""
    for flag, path in paths.items():
        if not os.path.isfile(path):
            raise UserError(f"{path}: file not found (--{flag})")


def _check_speech_tokenizer(path: str | None) -> None:
    if path is not None and not os.path.isfile(os.path.join(path, "config.json")):
        raise UserError(f"{path}: not a speech tokenizer directory, no config.json (--speech_tokenizer)")


# long: 83 of its lines are the 26 flags and their --help text (this docstring); the body is 25 lines
def train(
    manifest: str,
    units: str,
    out: str,
    preset: str = "tiny",
    speech_tokenizer: str | None = None,
    max_steps: PositiveInt = 1000,
    batch_size: PositiveInt | None = None,
    segment_units: PositiveInt | None = None,
    disc_width_div: PositiveInt | None = None,
    disc_start_step: NonNegativeInt = 0,
    lr: PositiveFloat = 2e-4,
    stft_weight: NonNegativeFloat | None = None,
    silence_weight: NonNegativeFloat | None = None,
    dc_weight: NonNegativeFloat | None = None,
    seed: int = 0,
    log_every: NonNegativeInt = 10,
    val_every: NonNegativeInt = 200,
    save_every: NonNegativeInt = 200,
    keep_checkpoints: NonNegativeInt = 1,
    threads: NonNegativeInt = 1,
    dtype: Literal["auto", "float32", "bfloat16"] = "auto",
    resume: bool | None = None,
    stop_after: PositiveInt | None = None,
    overwrite: bool = False,
    allow_skips: bool = False,
) -> None:
    """Train a unit HiFi-GAN vocoder on a manifest's audio and its units.

    Example::

        spiritlm vocoder train --config vocoder-tiny --manifest corpus/manifest.jsonl \\
            --units units.jsonl --speech_tokenizer tokenizer --out vocoder [--max_steps 1000]

    ``--config`` takes a recipe: a YAML file of these options, or a packaged one by name
    (``recipes/configs/vocoder-tiny.yaml``: the CPU recipe of the demo and vocoder/README.md;
    ``vocoder-base``, ``vocoder-expressive``); flags after it override it. Without it, a flag left
    unset takes the default below, and those marked "the preset's" take the values of
    ``recipes/configs/vocoder-PRESET.yaml``.

    OUT then holds the vocoder (``spiritlm vocoder synth --vocoder OUT``), checkpoints/,
    metrics.jsonl / metrics.json, TensorBoard logs (tb/) and audio samples (samples/). Under
    ``torchrun`` it trains with DDP (bf16 autocast on GPUs).

    Rerunning the same command on an interrupted run resumes it from its newest readable
    checkpoint (a truncated one is set aside as step_N.bad with a warning). An OUT holding a
    trained vocoder is refused unless --overwrite true; so is an unfinished run of other settings
    (the message names the flag; --max_steps, --log_every, --val_every, --save_every,
    --keep_checkpoints and --threads may change).

    Args:
        manifest: corpus manifest (JSONL with id, audio, speaker, split); trains on split train
            (or lines without a split), validates on valid (else test).
        units: units JSONL of that audio (``spiritlm tokenize`` output, Meta's format).
        out: run directory; the trained vocoder is written there.
        preset: vocoder preset: tiny, base or expressive.
        speech_tokenizer: the speech tokenizer directory that made the units (sizes the unit/pitch/style
            tables and checks every id); without it the preset's sizes are used.
        max_steps: training steps.
        batch_size: segments per step (default: 8 for tiny, 16 otherwise).
        segment_units: units per training segment, 640 samples each (default: 12 for tiny, 14 otherwise).
        disc_width_div: divide the discriminator's channels by this (default: 16 for tiny, 1 = full).
        disc_start_step: mel + duration losses only before this step (no discriminator), then the full GAN.
        lr: AdamW learning rate of generator and discriminator.
        stft_weight: weight of the multi-resolution STFT loss (log magnitude + spectral
            convergence at FFT sizes 1024/2048/512) next to 45 x mel L1; 0 = off (default: 15 for
            tiny, 0 = HiFi-GAN's recipe for base sizes; vocoder/README.md).
        silence_weight: weight of the silence loss: L1 of the output's log energy against the
            target's on the 5 ms frames where the target is below -60 dBFS (quiet pauses); 0 = off
            (default: the preset's, vocoder/README.md).
        dc_weight: weight of the DC loss, |mean| of each generated segment; 0 = off (default: the preset's).
        seed: seed of initialisation, sampling and dropout.
        log_every: steps between metric records.
        val_every: steps between validations and audio samples.
        save_every: steps between checkpoints.
        keep_checkpoints: most recent complete checkpoints kept (0: all), as ``spiritlm train``.
        threads: CPU threads of torch, BLAS and OpenMP (0: leave them as they are); 1 by default,
            so a seed gives the same weights whatever the machine's core count.
        dtype: auto (bf16 autocast on GPU), float32 or bfloat16.
        resume: ignored (kept for old scripts): an interrupted run of the same settings always resumes.
        stop_after: stop after this many steps in total (the schedule still assumes max_steps).
        overwrite: replace a trained vocoder, or an unfinished run of other settings, in OUT.
        allow_skips: train even when some units lines cannot be used (they are skipped and
            counted); by default such lines stop the command before training.
    """
    # flags and files first: a typo costs a second, not the imports of torch and speechbrain
    from .config import PRESETS

    _check_files(manifest=manifest, units=units)
    if preset not in PRESETS:
        raise UserError(f"unknown vocoder preset {preset!r} (choose from {', '.join(PRESETS)}) (--preset)")
    _check_speech_tokenizer(speech_tokenizer)

    from .losses import LossWeights
    from .train import TrainConfig, recipe_defaults, train_vocoder

    d = recipe_defaults(preset)
    cfg = TrainConfig(
        preset=preset, max_steps=max_steps,
        batch_size=batch_size or d["batch_size"], segment_units=segment_units or d["segment_units"],
        disc_width_div=disc_width_div or d["disc_width_div"], disc_start_step=disc_start_step, lr=lr, seed=seed,
        log_every=log_every, val_every=val_every, save_every=save_every, keep_checkpoints=keep_checkpoints, threads=threads, dtype=dtype,
        weights=LossWeights(stft=d["stft_weight"] if stft_weight is None else stft_weight,
                            silence=d["silence_weight"] if silence_weight is None else silence_weight,
                            dc=d["dc_weight"] if dc_weight is None else dc_weight),
    )
    s = train_vocoder(manifest, units, out, cfg, tokenizer=speech_tokenizer, stop_after=stop_after, overwrite=overwrite,
                      allow_skips=allow_skips)
    last = s["train"][max(s["train"], key=int)] if s.get("train") else {}
    print(f"vocoder train: step {s['final_step']}, mel L1 {last.get('mel_l1', float('nan')):.4f}, {s['seconds']:.0f} s -> {out}")


def evaluate(
    vocoder: str,
    manifest: str,
    units: str,
    out: str,
    speech_tokenizer: str | None = None,
    split: str = "test",
    max_utts: PositiveInt | None = None,
    seed: int | None = None,
    control_pairs: NonNegativeInt = 20,
    threads: NonNegativeInt = 1,
    allow_skips: bool = False,
    overwrite: bool = False,
) -> None:
    """Evaluate a vocoder's resynthesis of a split against the original audio and an untrained vocoder.

    Example::

        spiritlm vocoder eval --vocoder vocoder --manifest corpus/manifest.jsonl \\
            --units units.jsonl --speech_tokenizer tokenizer --out vocoder_eval

    Writes OUT/metrics.json (MCD, F0 RMSE, voicing error, unit re-tokenization error, duration
    MAE for the trained and an untrained vocoder; pitch and style control experiments),
    OUT/resynth.png and a few WAVs (OUT/wavs/). OUT is built under a temporary name and appears
    when complete; an OUT holding metrics.json is replaced only with ``--overwrite true``. Units
    lines that cannot be used are skipped and counted; the command then exits with status 1
    unless ``--allow_skips true``.

    Args:
        vocoder: vocoder folder (``spiritlm vocoder train`` output, or Meta's).
        manifest: corpus manifest (id, audio, speaker, style, split).
        units: units JSONL of that audio (the vocoder's input).
        out: output folder.
        speech_tokenizer: speech tokenizer directory that made the units (for the re-tokenization
            error; omitted: not computed).
        split: manifest split to evaluate.
        max_utts: evaluate at most this many utterances of the split.
        seed: initialisation seed of the untrained baseline (default: the training run's).
        control_pairs: utterance pairs of the pitch and style control experiments.
        threads: CPU threads of torch, BLAS and OpenMP (0: leave them as they are); 1 by default,
            the thread count of the README's figures.
        allow_skips: exit with status 0 even when some units lines were skipped.
        overwrite: replace a finished OUT (one holding metrics.json).
    """
    from spiritlm.atomic import atomic_dir, check_new_output

    _check_files(manifest=manifest, units=units)
    markers = ("metrics.json",)
    check_new_output(out, overwrite, markers=markers)
    if not os.path.exists(vocoder):
        raise UserError(f"{vocoder}: vocoder not found (--vocoder)")
    _check_speech_tokenizer(speech_tokenizer)

    from spiritlm.numerics import threads as pinned_threads

    from .evaluate import evaluate_vocoder

    with pinned_threads(threads), atomic_dir(out, overwrite, markers=markers) as tmp:
        r = evaluate_vocoder(vocoder, manifest, units, str(tmp), tokenizer=speech_tokenizer, split=split, max_utts=max_utts,
                             seed=seed, control_pairs=control_pairs)
    t, u = r["trained"], r["untrained"]
    print(f"vocoder eval: {r['num_utterances']} utterances; MCD {t['mcd_db']:.2f} dB (untrained {u['mcd_db']:.2f}), "
          f"F0 RMSE {t['f0_rmse_cents']:.0f} cents (untrained {u['f0_rmse_cents']:.0f}) -> {out}/metrics.json")
    if r.get("skipped_lines") and not allow_skips:
        raise UserError(f"{units}: {r['skipped_lines']} units lines skipped (see the lines above); pass --allow_skips true to accept")
