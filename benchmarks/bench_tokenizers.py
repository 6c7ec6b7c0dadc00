"""Tokenization speed per stream: seconds of audio per second of wall time, batched vs one at a time.

Streams: HuBERT-style units (MFCC backend), pitch (F0 extraction + VQ-VAE encoder) and style
(CNN encoder + pooling + k-means). Speed does not depend on trained weights, so untrained models
are used unless ``--tokenizer`` is given.

Then HuBERT-base units (``--no_hubert`` skips them): a randomly initialised HuBERT-base-sized
25 Hz model cut at layer 11 (the compute of mHuBERT-25Hz, whose weights cannot be downloaded
here), at each of ``--hubert_threads``: the reference path (transformers ``HubertModel``, one
utterance at a time, as today and as Meta's code) against ``HubertBackend`` one at a time,
batched with length bucketing, and in bf16, each with the share of its units equal to the
reference's fp32 units and the load average (the machine may be shared).

Then the F0 backends alone (``--f0_backends``, default all: pyworld DIO and Harvest, torchcrepe
``tiny``, FCPE — Meta's default — and pYAAPT — Meta's alternative): the real-time factor
(seconds of compute per second of audio, one utterance at a time, after a warm-up that also
loads the models) over ``--f0_seconds`` of the same audio.

Usage::

    python benchmarks/bench_tokenizers.py [--tokenizer DIR] [--manifest M] [--num_utts 16]
        [--batch_size 8] [--device cpu] [--threads 0] [--no_hubert] [--hubert_threads 1,2]
        [--hubert_utts 8] [--hubert_clusters 100] [--batch_seconds 80] [--repeat 2] [--f0_backend pyworld-dio]
        [--f0_backends dio,harvest,crepe,fcpe,pyaapt] [--f0_seconds 30] [--no_streams]

Audio: the utterances of ``--manifest``, or clips of 3-9 s cut from the real LibriSpeech
utterance in shared/data/real.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np
import torch

REAL = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "real", "7143-88743-0029.flac")


def _audio(args) -> list[np.ndarray]:
    from spiritlm.audio import load_audio

    if args.manifest:
        from spiritlm.corpus.manifest import read_audio_manifest

        return [load_audio(it.audio) for it in read_audio_manifest(args.manifest)[: args.num_utts]]
    real = REAL if os.path.exists(REAL) else "/work/shared/data/real/7143-88743-0029.flac"
    wav = load_audio(real)
    rng = np.random.default_rng(0)
    out = []
    for _ in range(args.num_utts):
        n = int(rng.uniform(3, 9) * 16000)
        s = int(rng.integers(0, len(wav) - n))
        out.append(wav[s : s + n])
    return out


def _time(fn, wavs, batch_size: int, repeat: int = 1) -> float:
    fn(wavs[:1])  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for i in range(0, len(wavs), batch_size):
            fn(wavs[i : i + batch_size])
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def _streams(args):
    from spiritlm.tokenizers.f0 import F0Config
    from spiritlm.tokenizers.features import FeatureConfig, load_backend
    from spiritlm.tokenizers.pitch import PitchConfig, PitchTokenizer
    from spiritlm.tokenizers.speech_tokenizer import SpeechTokenizer, UnitConfig, UnitTokenizer
    from spiritlm.tokenizers.f0 import SpeakerStats
    from spiritlm.tokenizers.style import StyleCNN, StyleConfig, StyleTokenizer
    from spiritlm.tokenizers.vqvae import PitchVQVAE, VQVAEConfig

    dev = torch.device(args.device)
    torch.manual_seed(0)
    streams = {}
    if args.tokenizer:
        tok = SpeechTokenizer.load(args.tokenizer, device=dev)
        streams[f"units ({tok.units.cfg.features.backend})"] = tok.units.encode
        if tok.pitch is not None:
            streams["pitch"] = tok.pitch.encode
            streams["style"] = tok.style.encode
    else:
        mfcc = load_backend(FeatureConfig(backend="mfcc"), dev)
        streams["units (mfcc)"] = UnitTokenizer(mfcc, np.random.randn(100, mfcc.dim).astype(np.float32), UnitConfig()).encode
        pitch = PitchTokenizer(PitchVQVAE(VQVAEConfig(channels=48, latent_dim=32)).to(dev).eval(),
                               SpeakerStats({}, float(np.log(150)), 0.25), PitchConfig(f0=F0Config(backend=args.f0_backend, device=str(dev))))
        streams[f"pitch ({args.f0_backend})"] = pitch.encode
        scfg = StyleConfig(n_mels=64, channels=96, layers=3, embed_dim=32, labels=["a", "b", "c", "d"])
        streams["style (cnn)"] = StyleTokenizer(StyleCNN(scfg).to(dev), scfg, np.random.randn(16, 32).astype(np.float32)).to(dev).encode
    return streams


def _hubert_base(dev):
    """HuBERT-base-sized 25 Hz model (mHuBERT-25Hz's shape: group-norm front end with one more
    stride-2 layer, 12 x 768 transformer), random weights, seed 0."""
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(0)
    cfg = HubertConfig(conv_dim=[512] * 8, conv_stride=[5, 2, 2, 2, 2, 2, 2, 2], conv_kernel=[10, 3, 3, 3, 3, 2, 2, 2])
    return HubertModel(cfg).to(dev).eval()


def _hubert_units(args, wavs) -> None:
    """HuBERT-base units, layer 11: the reference path (a plain transformers ``HubertModel``
    called one utterance at a time, weight norm recomputed each call: today's speed and Meta's
    way) against :class:`HubertBackend` one at a time, batched with length bucketing, and bf16;
    at each thread count, with the share of units equal to the fp32 reference's."""
    from spiritlm.tokenizers.features import HubertBackend, length_buckets
    from spiritlm.tokenizers.kmeans import KMeansConfig, KMeansQuantizer, train_kmeans

    dev = torch.device(args.device)
    seconds = sum(len(w) for w in wavs) / 16000
    ref = _hubert_base(dev)
    ours = HubertBackend(_hubert_base(dev), layer=11)
    layer = 11

    @torch.inference_mode()
    def reference(ws):
        out = []
        for w in ws:
            h = ref(torch.from_numpy(w)[None].to(dev), output_hidden_states=True).hidden_states[layer]
            out.append(h[0].float().cpu().numpy())
        return out

    def batches(ws, one_at_a_time):
        if one_at_a_time:
            return [[i] for i in range(len(ws))]
        return length_buckets([len(w) for w in ws], args.batch_seconds * 16000, args.batch_size)

    def run_ours(ws, one_at_a_time):
        out = [None] * len(ws)
        for idx in batches(ws, one_at_a_time):
            for i, f in zip(idx, ours.extract([ws[i] for i in idx])):
                out[i] = f
        return out

    # k-means centres fitted on the reference's fp32 features (random centres would put every
    # frame near a boundary or none): the agreement then counts frames that change cluster.
    ref_feats = reference(wavs)
    centers = train_kmeans(ref_feats, KMeansConfig(n_clusters=args.hubert_clusters, n_init=1, max_frames=None, seed=0))
    q = KMeansQuantizer(centers).to(dev)

    def units(feats):
        return np.concatenate([q(torch.from_numpy(f).to(dev)).cpu().numpy() for f in feats])

    ref_units = units(ref_feats)
    modes = [("reference: transformers, one at a time, fp32", None, True, reference),
             ("HubertBackend, one at a time, fp32", "fp32", True, None),
             ("HubertBackend, batched, fp32", "fp32", False, None),
             ("HubertBackend, one at a time, bf16", "bf16", True, None),
             ("HubertBackend, batched, bf16", "bf16", False, None)]
    print(f"HuBERT-base 25 Hz units (layer 11, random weights, {args.hubert_clusters} k-means units fitted on the "
          f"reference's features): {len(wavs)} utterances, {seconds:.1f} s; batched = length buckets of at most "
          f"{args.batch_size} utterances and {args.batch_seconds:.0f} s padded")
    print(f"{'threads':>7}  {'path':<48} {'speed':>12} {'vs ref':>7} {'units = fp32 ref':>17}   load avg")
    for threads in [int(t) for t in args.hubert_threads.split(",") if t]:
        torch.set_num_threads(threads)
        base = None
        for name, precision, single, fn in modes:
            if fn is None:
                ours.set_precision(precision)
                fn = (lambda ws, s=single: run_ours(ws, s))
            fn(wavs[:1])  # warm-up
            dt = float("inf")
            for _ in range(args.repeat):  # best of --repeat: the least disturbed by other jobs
                t = time.perf_counter()
                feats = fn(wavs)
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                dt = min(dt, time.perf_counter() - t)
            base = base or dt
            agree = float(np.mean(units(feats) == ref_units))
            print(f"{threads:>7}  {name:<48} {seconds / dt:>11.1f}x {base / dt:>6.2f}x {100 * agree:>16.2f}%   "
                  f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    ours.set_precision("fp32")



def _f0_speed(args, wavs) -> None:
    from spiritlm.tokenizers.f0 import F0Config, extract_f0_batch

    clips, total = [], 0.0
    for w in wavs:  # the first --f0_seconds of audio, whole utterances
        if total >= args.f0_seconds:
            break
        clips.append(w)
        total += len(w) / 16000
    print(f"F0 backends: {len(clips)} utterances, {total:.1f} s, one at a time, {torch.get_num_threads()} torch threads")
    print(f"{'F0 backend':<20} {'real-time factor':>17} {'speed':>10}")
    for name in [b for b in args.f0_backends.split(",") if b]:
        cfg = F0Config(backend=name, device=args.device)
        extract_f0_batch([clips[0][:16000]], cfg)  # warm-up, model loading
        t = time.perf_counter()
        for w in clips:
            extract_f0_batch([w], cfg)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        dt = time.perf_counter() - t
        print(f"{name:<20} {dt / total:>17.3f} {total / dt:>9.1f}x", flush=True)


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return cpu


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", help="tokenizer directory (default: untrained models of the tiny sizes)")
    ap.add_argument("--manifest", help="manifest whose audio to use (default: clips of the real utterance)")
    ap.add_argument("--num_utts", type=int, default=16)
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--no_hubert", action="store_true", help="skip the HuBERT-base-sized model")
    ap.add_argument("--hubert_threads", default="1,2", help="torch thread counts of the HuBERT comparison (comma-separated)")
    ap.add_argument("--hubert_utts", type=int, default=8, help="utterances of the HuBERT comparison (the first ones)")
    ap.add_argument("--hubert_clusters", type=int, default=100, help="k-means units of the HuBERT agreement")
    ap.add_argument("--batch_seconds", type=float, default=80.0, help="padded seconds per HuBERT batch")
    ap.add_argument("--repeat", type=int, default=2, help="timings of each HuBERT path (the best is shown)")
    ap.add_argument("--f0_backend", default="pyworld-dio", help="F0 backend of the pitch stream")
    ap.add_argument("--f0_backends", default="dio,harvest,crepe,fcpe,pyaapt", help="F0 backends timed alone (comma-separated; empty: none)")
    ap.add_argument("--f0_seconds", type=float, default=30.0, help="seconds of audio for the F0 backend timings")
    ap.add_argument("--no_streams", action="store_true", help="time the F0 backends only")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    wavs = _audio(args)
    seconds = sum(len(w) for w in wavs) / 16000
    cpu = cpu_name()
    print(f"command: {' '.join([os.path.basename(sys.executable)] + sys.argv)}")
    print(f"machine: {cpu}; {os.cpu_count()} CPUs; torch {torch.__version__}, {torch.get_num_threads()} threads; device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else ""))
    print(f"audio: {len(wavs)} utterances, {seconds:.1f} s; batched = {args.batch_size} per batch; "
          f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} (a shared machine's numbers are noisy)")
    if not args.no_streams:
        print(f"{'stream':<50} {'one at a time':>14} {'batched':>10}   (seconds of audio per second)")
        for name, fn in _streams(args).items():
            single = _time(fn, wavs, 1)
            batched = _time(fn, wavs, args.batch_size)
            print(f"{name:<50} {seconds / single:>13.1f}x {seconds / batched:>9.1f}x", flush=True)
    if not args.no_hubert:
        _hubert_units(args, wavs[: args.hubert_utts])
    if args.f0_backends:
        _f0_speed(args, wavs)


if __name__ == "__main__":
    main()
