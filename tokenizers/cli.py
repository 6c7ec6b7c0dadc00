"""``spiritlm tokenizer dump-features | assemble | train``: thin wrappers over the library."""

from __future__ import annotations

import json
import os
import sys
from typing import Literal

from jsonargparse.typing import NonNegativeInt, PositiveInt


def dump_features(
    manifest: str,
    out: str,
    backend: Literal["mfcc", "hubert", "fairseq-hubert"] = "mfcc",
    hubert: str | None = None,
    layer: PositiveInt = 11,
    normalize: bool = False,
    device: str = "cpu",
    batch_size: PositiveInt = 8,
    overwrite: bool = False,
) -> None:
    """Writes each utterance's 25 Hz features as OUT/<id>.npy (float32, frames x dim).

    Each file is written under a temporary name and renamed; a rerun resumes (redoes the files
    that are missing or do not load). An OUT holding every utterance's file is finished: a rerun
    is refused unless --overwrite true, which computes them all again.

    Args:
        manifest: JSONL manifest (``id`` and ``audio`` are used).
        out: output folder.
        backend: ``hubert`` (transformers directory), ``fairseq-hubert`` (fairseq checkpoint
            file) or ``mfcc``.
        hubert: HuBERT directory / checkpoint file (backends hubert, fairseq-hubert).
        layer: transformer layer (1-based; Spirit LM uses 11).
        normalize: normalise each waveform to zero mean and unit variance first (models
            trained with normalize=True).
        device: ``cpu``, ``cuda`` or ``auto``.
        batch_size: utterances per forward pass.
        overwrite: compute every file again (an OUT holding them all is otherwise refused).
    """
    from spiritlm.atomic import atomic_file, check_output
    from spiritlm.errors import UserError

    from ..corpus.manifest import ManifestError, read_audio_manifest

    check_output(out, True, done=("_",))  # OUT a file, or a parent that is a file: one line naming it
    if not os.path.isfile(manifest):
        raise UserError(f"{manifest}: no such file (--manifest)")
    try:
        items = read_audio_manifest(manifest)
    except (ManifestError, ValueError) as e:
        raise UserError(f"{e} (--manifest)") from None
    # a file is done only if it loads as a (frames, dim) float32 array: each is written under a
    # temporary name and renamed, but files of older runs may be truncated
    todo = [it for it in items if overwrite or not _valid_features(os.path.join(out, f"{it.id}.npy"))]
    if items and not todo:
        raise UserError(f"{out}: already exists (a finished output: a features file for every utterance); "
                        "pass --overwrite true to replace it (--out)")

    import numpy as np
    from tqdm import tqdm

    from .features import FeatureConfig, load_backend
    from .utils import load_audio_batch

    model = load_backend(FeatureConfig(backend=backend, checkpoint=hubert, layer=layer, normalize=normalize), device)
    os.makedirs(out, exist_ok=True)
    errors = []
    for i in tqdm(range(0, len(todo), batch_size), desc="features", unit="batch"):
        batch, wavs = load_audio_batch(todo[i : i + batch_size], errors)
        if not wavs:
            continue
        for it, f in zip(batch, model.extract(wavs)):
            with atomic_file(os.path.join(out, f"{it.id}.npy"), "wb") as fh:
                np.save(fh, f.astype(np.float32))
    print(f"dump-features: {len(todo) - len(errors)} written, {len(items) - len(todo)} already there, {len(errors)} skipped -> {out}")
    if errors:
        with atomic_file(os.path.join(out, "errors.json")) as f:
            json.dump(errors, f, indent=1)
        for e in errors:
            print(f"  skipped {e['id']}: {e['error']}", file=sys.stderr)


def _valid_features(path: str) -> bool:
    """Whether ``path`` holds a complete, finite ``(frames, dim)`` float32 array."""
    import numpy as np

    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
        return arr.ndim == 2 and arr.dtype == np.float32 and arr.shape[0] > 0 and bool(np.isfinite(arr).all())
    except (OSError, ValueError, EOFError):
        return False


# Meta's release, relative to its checkpoints/speech_tokenizer folder (facebookresearch/spiritlm)
META_HUBERT = ("hubert_25hz", "mhubert_base_25hz.pt")
META_QUANTIZER = ("hubert_25hz", "L11_quantizer_500.pt")
META_PITCH = "vqvae_f0_quantizer"  # config.yaml + model.pt
META_STYLE = "style_encoder_w2v2"  # config.json + pytorch_model.bin (transformers)


def meta_release_paths(directory: str, expressive: bool) -> dict[str, str]:
    """The files of Meta's released speech tokenizer under ``directory`` (the ``checkpoints``
    folder or its ``speech_tokenizer`` subfolder). Raises a one-line UserError naming the first
    missing file."""
    from ..errors import UserError

    root = directory
    if os.path.isdir(os.path.join(directory, "speech_tokenizer")):
        root = os.path.join(directory, "speech_tokenizer")
    if not os.path.isdir(root):
        raise UserError(f"{directory}: not a folder (--meta_checkpoints)")
    paths = {"hubert": os.path.join(root, *META_HUBERT), "kmeans": os.path.join(root, *META_QUANTIZER)}
    need = [paths["hubert"], paths["kmeans"]]
    if expressive:
        paths["pitch"], paths["style"] = os.path.join(root, META_PITCH), os.path.join(root, META_STYLE)
        need += [os.path.join(paths["pitch"], "config.yaml"), os.path.join(paths["pitch"], "model.pt"), os.path.join(paths["style"], "config.json")]
    for f in need:
        if not os.path.isfile(f):
            raise UserError(f"{f}: missing from Meta's checkpoint folder (--meta_checkpoints {directory}"
                            + (", --expressive true" if expressive else "") + ")")
    if expressive and not any(os.path.isfile(os.path.join(paths["style"], w)) for w in ("pytorch_model.bin", "model.safetensors")):
        raise UserError(f"{os.path.join(paths['style'], 'pytorch_model.bin')}: missing from Meta's checkpoint folder "
                        f"(--meta_checkpoints {directory}, --expressive true)")
    return paths


def assemble(
    out: str,
    hubert: str | None = None,
    kmeans: str | None = None,
    layer: PositiveInt = 11,
    pitch: str | None = None,
    style: str | None = None,
    style_kmeans: str | None = None,
    normalize: bool = False,
    f0: str | None = None,
    speaker_stats: str | None = None,
    meta_checkpoints: str | None = None,
    expressive: bool = False,
    overwrite: bool = False,
) -> None:
    """Builds a tokenizer directory from existing checkpoints (Meta's released ones included).

    Either ``--meta_checkpoints DIR`` (Meta's whole release, downloaded from Meta under its
    license; ``--expressive true`` adds pitch and style) or ``--hubert`` and ``--kmeans`` (and
    optionally ``--pitch`` and ``--style``). OUT appears when complete; an existing tokenizer
    there is replaced only with ``--overwrite true``.

    Args:
        out: output tokenizer directory.
        hubert: a transformers HuBERT directory, a fairseq HuBERT checkpoint file
            (e.g. Meta's ``hubert_25hz/mhubert_base_25hz.pt``), or ``mfcc``.
        kmeans: unit quantizer file: a k-means file (``{"cluster_centers", "n_clusters"}``) or
            Meta's linear quantizer (``{"model_cfg", "model_weight"}``, e.g.
            ``hubert_25hz/L11_quantizer_500.pt``); the layout is detected from the file.
        layer: HuBERT layer the quantizer was trained on (1-based).
        pitch: a pitch tokenizer directory written by this project, or Meta's
            ``vqvae_f0_quantizer`` folder (``config.yaml`` + ``model.pt``) (expressive).
        style: a style tokenizer directory written by this project, or a transformers
            ``Wav2Vec2ForSequenceClassification`` directory (Meta's ``style_encoder_w2v2``;
            tokens are its classifier's argmax unless ``style_kmeans`` is given).
        style_kmeans: k-means file over pooled style embeddings, for a w2v2 ``style``.
        normalize: normalise waveforms before HuBERT (mHuBERT-25Hz: false).
        f0: F0 backend of the pitch tokenizer: ``fcpe``, ``pyaapt``, ``dio``, ``harvest`` or
            ``crepe``. Default: ``fcpe`` with Meta's quantizer (as Meta's release), the
            directory's own backend for a pitch tokenizer trained here.
        speaker_stats: Meta-format speaker stats file (``{speaker: {"f0_mean": Hz}}``) for
            Meta's quantizer; default: the file its ``config.yaml`` names, when present (else
            each utterance's own voiced mean F0 is subtracted).
        meta_checkpoints: Meta's ``checkpoints`` folder (or its ``speech_tokenizer``
            subfolder): ``hubert_25hz/{mhubert_base_25hz.pt, L11_quantizer_500.pt}``, and with
            ``--expressive true`` ``vqvae_f0_quantizer/`` and ``style_encoder_w2v2/``.
        expressive: with ``--meta_checkpoints``: build the expressive tokenizer (HuBERT units +
            pitch with FCPE + style) instead of the base one.
        overwrite: replace a tokenizer already in OUT.
    """
    from spiritlm.atomic import atomic_dir, check_new_output

    from ..errors import UserError

    # flags and paths first: a typo costs a second, not the imports of torch and transformers
    markers = ("config.json",)
    check_new_output(out, overwrite, markers=markers)
    hubert, kmeans, pitch, style = _assemble_paths(hubert, kmeans, pitch, style, style_kmeans, speaker_stats,
                                                   meta_checkpoints, expressive)
    backend_name = _f0_backend(f0)

    from .features import FeatureConfig, load_backend
    from .kmeans import load_quantizer
    from .speech_tokenizer import SpeechTokenizer, UnitConfig, UnitTokenizer

    if hubert == "mfcc":
        fcfg = FeatureConfig(backend="mfcc")
    else:
        fcfg = FeatureConfig(backend="hubert" if os.path.isdir(hubert) else "fairseq-hubert", checkpoint=os.path.abspath(hubert), layer=layer, normalize=normalize)
    units = UnitTokenizer(load_backend(fcfg, "cpu"), load_quantizer(kmeans), UnitConfig(features=fcfg))
    pitch_tok = _pitch_tokenizer(pitch, backend_name, f0, speaker_stats)
    style_tok = _style_tokenizer(style, style_kmeans)
    if (pitch_tok is None) != (style_tok is None):
        raise UserError("an expressive tokenizer needs both --pitch and --style (a base one neither)")
    with atomic_dir(out, overwrite, markers=markers) as tmp:
        SpeechTokenizer(units, pitch_tok, style_tok).save(tmp)
    kind = "expressive" if pitch_tok else "base"
    qkind = type(units.quantizer).__name__
    extra = f", pitch F0 from {pitch_tok.cfg.f0.backend}" if pitch_tok else ""
    print(f"assemble: {kind} tokenizer with {units.n_units} units ({qkind}){extra} -> {out}")


def _assemble_paths(hubert, kmeans, pitch, style, style_kmeans, speaker_stats, meta_checkpoints, expressive):
    """``assemble``'s ``(hubert, kmeans, pitch, style)``: Meta's release folder's, or the flags', each
    checked to exist; a one-line UserError naming the flag otherwise."""
    from ..errors import UserError

    if meta_checkpoints:
        given = [f"--{k}" for k, v in (("hubert", hubert), ("kmeans", kmeans), ("pitch", pitch), ("style", style)) if v]
        if given:
            raise UserError(f"--meta_checkpoints takes every checkpoint from {meta_checkpoints}: drop {', '.join(given)}")
        paths = meta_release_paths(meta_checkpoints, expressive)
        hubert, kmeans, pitch, style = paths["hubert"], paths["kmeans"], paths.get("pitch"), paths.get("style")
    elif expressive:
        raise UserError("--expressive true goes with --meta_checkpoints (otherwise give --pitch and --style)")
    if not hubert or not kmeans:
        raise UserError("give --hubert and --kmeans, or --meta_checkpoints DIR")
    for flag, path in (("--hubert", None if hubert == "mfcc" else hubert), ("--kmeans", kmeans), ("--pitch", pitch),
                       ("--style", style), ("--style_kmeans", style_kmeans), ("--speaker_stats", speaker_stats)):
        if path is not None and not os.path.exists(path):
            raise UserError(f"{path}: no such file or folder ({flag})")
    return hubert, kmeans, pitch, style


def _f0_backend(f0: str | None) -> str | None:
    """The F0 backend ``--f0`` names (an alias resolved), or None; a one-line UserError listing the choices."""
    from ..errors import UserError
    from .f0 import ALIASES, BACKENDS, resolve_backend

    backend_name = None
    if f0 is not None:
        try:
            backend_name = resolve_backend(f0)
        except ValueError:
            raise UserError(f"--f0 {f0}: choose from {', '.join(list(ALIASES) + [b for b in BACKENDS if b not in ALIASES.values()])}") from None
    return backend_name


def _pitch_tokenizer(pitch: str | None, backend_name: str | None, f0: str | None, speaker_stats: str | None):
    """The pitch tokenizer of ``--pitch`` (Meta's ``vqvae_f0_quantizer`` folder or one trained here,
    its F0 backend set by ``--f0``), or None; ``--speaker_stats``/``--f0`` without one are refused."""
    from dataclasses import replace

    from ..errors import UserError
    from .meta_pitch import load_pitch_tokenizer

    pitch_tok = None
    if pitch and os.path.isfile(os.path.join(pitch, "config.yaml")) and os.path.isfile(os.path.join(pitch, "model.pt")):
        from .f0 import F0Config
        from .meta_pitch import MetaPitchTokenizer
        from .pitch import PitchConfig

        # Meta's vqvae_f0_quantizer folder; FCPE unless --f0 says otherwise
        pitch_tok = MetaPitchTokenizer(pitch, cfg=PitchConfig(f0=F0Config(backend=backend_name or "fcpe")), speaker_stats=speaker_stats)
    elif pitch:
        pitch_tok = load_pitch_tokenizer(pitch)
        if backend_name:
            pitch_tok.cfg = replace(pitch_tok.cfg, f0=replace(pitch_tok.cfg.f0, backend=backend_name))
    if speaker_stats and not (pitch_tok is not None and getattr(pitch_tok, "speaker_stats_path", None)):
        raise UserError(f"{speaker_stats}: --speaker_stats is for Meta's vqvae_f0_quantizer (--pitch or --meta_checkpoints --expressive true)")
    if f0 is not None and pitch_tok is None:
        raise UserError(f"--f0 {f0}: no pitch tokenizer to use it (give --pitch, or --meta_checkpoints with --expressive true)")
    return pitch_tok


def _style_tokenizer(style: str | None, style_kmeans: str | None):
    """The style tokenizer of ``--style``: one trained here, or a w2v2 classifier (its argmax, or
    ``--style_kmeans``' clusters of its pooled embeddings); None without ``--style``."""
    from .kmeans import load_kmeans
    from .style import StyleConfig, StyleTokenizer, W2V2StyleEncoder

    style_tok = None
    if style:
        if os.path.isfile(os.path.join(style, "style_config.json")):
            style_tok = StyleTokenizer.load(style)
        else:
            cfg = StyleConfig(backend="w2v2", checkpoint=os.path.abspath(style), mode="kmeans" if style_kmeans else "classifier")
            style_tok = StyleTokenizer(W2V2StyleEncoder.from_pretrained(style), cfg, load_kmeans(style_kmeans) if style_kmeans else None)
    return style_tok


def train(
    manifest: str,
    out: str,
    preset: str = "tiny",
    hubert: str | None = None,
    layer: PositiveInt = 11,
    style_encoder: str | None = None,
    seed: int = 0,
    device: str = "cpu",
    max_utts: PositiveInt | None = None,
    threads: NonNegativeInt = 1,
    work_dir: str | None = None,
    max_frames: PositiveInt | None = None,
    keep_work: bool = False,
    num_workers: NonNegativeInt | None = None,
    overwrite: bool = False,
) -> None:
    """Trains the streams a preset needs and writes OUT (tokenizer) and OUT/metrics.json.

    OUT is built under a temporary name and appears only when training succeeded; an OUT holding
    a tokenizer is refused unless --overwrite true (then replaced on success). Features, F0
    tracks and style embeddings are streamed to memory-mapped shards in WORK_DIR (default
    OUT.work), so memory does not grow with the corpus; rerunning a failed or killed run resumes
    from the complete shards, and shards made with other settings are refused naming the flag
    (--overwrite true recomputes them). WORK_DIR is removed after success unless --keep_work true.

    Args:
        manifest: JSONL manifest with ``split`` (train/valid/test), ``speaker``, ``style`` and
            ``phones`` alignments (the synthetic corpus has them all).
        out: output tokenizer directory.
        preset: ``tiny`` (MFCC units + pitch + style, sized for a CPU), ``base`` (HuBERT units)
            or ``expressive`` (HuBERT units + pitch + style): the recipes
            ``recipes/configs/tokenizer-NAME.yaml``; a packaged recipe's name or a YAML file of
            ``TrainPreset``'s fields works too.
        hubert: HuBERT transformers directory or fairseq checkpoint (base, expressive).
        layer: HuBERT layer (1-based).
        style_encoder: transformers wav2vec 2.0 style encoder directory (expressive; default:
            train the CNN style encoder on the manifest's style labels).
        seed: random seed of every stage.
        device: ``cpu``, ``cuda`` or ``auto``.
        max_utts: use only the first N utterances of the manifest.
        threads: CPU threads of torch, BLAS and OpenMP (0: leave them as they are); 1: the same tokens on any core count.
        work_dir: folder of the resumable shards (default: OUT.work).
        max_frames: frames sampled for the units' k-means (default: the preset's; base: 1,000,000).
        keep_work: keep WORK_DIR after success.
        num_workers: DataLoader processes reading the pitch VQ-VAE's and the style CNN's
            training crops from the shards (default: the preset's, 0 = the training process;
            the result is the same).
        overwrite: replace a tokenizer in OUT, and shards of other settings in WORK_DIR.
    """
    import shutil

    from spiritlm.atomic import atomic_dir, check_new_output
    from spiritlm.errors import UserError

    if not os.path.isfile(manifest):
        raise UserError(f"{manifest}: no such file (--manifest)")
    markers = ("units/unit_config.json",)
    check_new_output(out, overwrite, markers=markers)  # before hours of training, not after
    from .train import make_preset, train_tokenizer

    try:
        make_preset(preset, hubert=hubert, layer=layer, style_encoder=style_encoder)
    except ValueError as e:
        raise UserError(str(e) if "(--preset)" in str(e) else f"--preset {preset}: {e}") from None

    work_dir = work_dir or os.path.normpath(out) + ".work"
    # with --overwrite an older tokenizer in OUT is replaced on success; any other non-empty folder is refused
    with atomic_dir(out, overwrite=overwrite, markers=markers) as tmp:
        m = train_tokenizer(manifest, str(tmp), preset, hubert=hubert, layer=layer, style_encoder=style_encoder, seed=seed, device=device,
                            max_utts=max_utts, threads=threads, work_dir=work_dir, max_frames=max_frames, num_workers=num_workers,
                            overwrite=overwrite)
    if not keep_work:
        shutil.rmtree(work_dir, ignore_errors=True)
    keys = ["pnmi", "phone_purity", "f0_rmse_cents", "vuv_error", "codebook_perplexity", "codebook_usage", "style_purity"]
    print(json.dumps({k: round(m[k], 4) for k in keys if k in m}))
    print(f"tokenizer written to {out} (metrics in {os.path.join(out, 'metrics.json')})")


COMMANDS = {"dump-features": dump_features, "assemble": assemble, "train": train}
