"""``spiritlm tokenizer dump-features | assemble | train``: thin wrappers over the library."""

from __future__ import annotations

import json
import os
import sys


def dump_features(
    manifest: str,
    out: str,
    backend: str = "mfcc",
    checkpoint: str | None = None,
    layer: int = 11,
    normalize: bool = False,
    device: str = "cpu",
    batch_size: int = 8,
) -> None:
    """Writes each utterance's 25 Hz features as OUT/<id>.npy (float32, frames x dim).

    Args:
        manifest: JSONL manifest (``id`` and ``audio`` are used).
        out: output folder.
        backend: ``hubert`` (transformers directory), ``fairseq-hubert`` (fairseq checkpoint
            file) or ``mfcc``.
        checkpoint: HuBERT directory / checkpoint file (hubert, fairseq-hubert).
        layer: transformer layer (1-based; Spirit LM uses 11).
        normalize: normalise each waveform to zero mean and unit variance first (models
            trained with normalize=True).
        device: ``cpu``, ``cuda`` or ``auto``.
        batch_size: utterances per forward pass.
    """
    import numpy as np
    from tqdm import tqdm

    from ._compat import load_audio_batch
    from .features import FeatureConfig, load_backend
    from .manifest import read_items

    items = read_items(manifest)
    model = load_backend(FeatureConfig(backend=backend, checkpoint=checkpoint, layer=layer, normalize=normalize), device)
    os.makedirs(out, exist_ok=True)
    errors = []
    todo = [it for it in items if not os.path.exists(os.path.join(out, f"{it.id}.npy"))]
    for i in tqdm(range(0, len(todo), batch_size), desc="features", unit="batch"):
        batch, wavs = load_audio_batch(todo[i : i + batch_size], errors)
        if not wavs:
            continue
        for it, f in zip(batch, model.extract(wavs)):
            np.save(os.path.join(out, f"{it.id}.npy"), f.astype(np.float32))
    print(f"dump-features: {len(todo) - len(errors)} written, {len(items) - len(todo)} already there, {len(errors)} skipped -> {out}")
    if errors:
        with open(os.path.join(out, "errors.json"), "w") as f:
            json.dump(errors, f, indent=1)
        for e in errors:
            print(f"  skipped {e['id']}: {e['error']}", file=sys.stderr)


def assemble(
    hubert: str,
    kmeans: str,
    out: str,
    layer: int = 11,
    pitch: str | None = None,
    style: str | None = None,
    style_kmeans: str | None = None,
    normalize: bool = False,
) -> None:
    """Builds a tokenizer directory from existing checkpoints (Meta's released ones included).

    Args:
        hubert: a transformers HuBERT directory, a fairseq HuBERT checkpoint file
            (e.g. Meta's ``hubert_25hz/mhubert_base_25hz.pt``), or ``mfcc``.
        kmeans: k-means file in Meta's format (e.g. ``hubert_25hz/L11_quantizer_500.pt``).
        out: output tokenizer directory.
        layer: HuBERT layer the k-means was trained on (1-based).
        pitch: a pitch tokenizer directory written by this project, or Meta's
            ``vqvae_f0_quantizer`` folder (``config.yaml`` + ``model.pt``; F0 from
            pyworld DIO, speaker means from each utterance) (expressive).
        style: a style tokenizer directory written by this project, or a transformers
            ``Wav2Vec2ForSequenceClassification`` directory (Meta's ``style_encoder_w2v2``;
            tokens are its classifier's argmax unless ``style_kmeans`` is given).
        style_kmeans: k-means file over pooled style embeddings, for a w2v2 ``style``.
        normalize: normalise waveforms before HuBERT.
    """
    from .features import FeatureConfig, load_backend
    from .kmeans import load_kmeans
    from .pitch import PitchTokenizer
    from .speech_tokenizer import SpeechTokenizer, UnitConfig, UnitTokenizer
    from .style import StyleConfig, StyleTokenizer, W2V2StyleEncoder

    if hubert == "mfcc":
        fcfg = FeatureConfig(backend="mfcc")
    else:
        fcfg = FeatureConfig(backend="hubert" if os.path.isdir(hubert) else "fairseq-hubert", checkpoint=os.path.abspath(hubert), layer=layer, normalize=normalize)
    units = UnitTokenizer(load_backend(fcfg, "cpu"), load_kmeans(kmeans), UnitConfig(features=fcfg))
    pitch_tok = None
    if pitch and os.path.isfile(os.path.join(pitch, "config.yaml")) and os.path.isfile(os.path.join(pitch, "model.pt")):
        from .meta_pitch import MetaPitchTokenizer

        pitch_tok = MetaPitchTokenizer(pitch)  # Meta's vqvae_f0_quantizer folder
    elif pitch:
        pitch_tok = PitchTokenizer.load(pitch)
    style_tok = None
    if style:
        if os.path.isfile(os.path.join(style, "style_config.json")):
            style_tok = StyleTokenizer.load(style)
        else:
            cfg = StyleConfig(backend="w2v2", checkpoint=os.path.abspath(style), mode="kmeans" if style_kmeans else "classifier")
            style_tok = StyleTokenizer(W2V2StyleEncoder.from_pretrained(style), cfg, load_kmeans(style_kmeans) if style_kmeans else None)
    SpeechTokenizer(units, pitch_tok, style_tok).save(out)
    print(f"assemble: {'expressive' if pitch_tok else 'base'} tokenizer with {units.n_units} units -> {out}")


def train(
    manifest: str,
    out: str,
    preset: str = "tiny",
    hubert: str | None = None,
    layer: int = 11,
    style_encoder: str | None = None,
    seed: int = 0,
    device: str = "cpu",
    max_utts: int | None = None,
    threads: int = 1,
) -> None:
    """Trains the streams a preset needs and writes OUT (tokenizer) and OUT/metrics.json.

    Args:
        manifest: JSONL manifest with ``split`` (train/valid/test), ``speaker``, ``style`` and
            ``phones`` alignments (the synthetic corpus has them all).
        out: output tokenizer directory.
        preset: ``tiny`` (MFCC units + pitch + style, sized for a CPU), ``base`` (HuBERT units)
            or ``expressive`` (HuBERT units + pitch + style).
        hubert: HuBERT transformers directory or fairseq checkpoint (base, expressive).
        layer: HuBERT layer (1-based).
        style_encoder: transformers wav2vec 2.0 style encoder directory (expressive; default:
            train the CNN style encoder on the manifest's style labels).
        seed: random seed of every stage.
        device: ``cpu``, ``cuda`` or ``auto``.
        max_utts: use only the first N utterances of the manifest.
        threads: torch CPU threads (1 is fastest on small shared CPUs; 0 keeps torch's default).
    """
    from .train import train_tokenizer

    m = train_tokenizer(manifest, out, preset, hubert=hubert, layer=layer, style_encoder=style_encoder, seed=seed, device=device, max_utts=max_utts, threads=threads or None)
    keys = ["pnmi", "phone_purity", "f0_rmse_cents", "vuv_error", "codebook_perplexity", "codebook_usage", "style_purity"]
    print(json.dumps({k: round(m[k], 4) for k in keys if k in m}))
    print(f"tokenizer written to {out} (metrics in {os.path.join(out, 'metrics.json')})")


COMMANDS = {"dump-features": dump_features, "assemble": assemble, "train": train}
