"""HuBERT-25Hz units, ours against the reference, side by side in one process.

The reference is what Meta's speech tokenizer does, run with transformers: a ``HubertModel``
loaded from the checkpoint directory (``from_pretrained``, weight norm as transformers keeps
it), one utterance at a time, fp32, cut after transformer layer 11 (fairseq's
``extract_features(output_layer=11)`` stops there too), then the nearest k-means centre by
``|x|² - 2 x·c + |c|²`` in fp32. Ours is ``UnitTokenizer`` (``HubertBackend`` + ``KMeansQuantizer``)
loaded from the same directory, at each ``--precisions`` value.

The model is HuBERT-base-sized with mHuBERT-25Hz's shape (group-norm front end with one more
stride-2 layer, 12 x 768 transformer) and random weights (seed 0): the real weights cannot be
downloaded here. Random weights make unit equality a weaker test than trained ones would (their
features are less clustered), so the k-means centres are fitted on the reference's features of
speech (``--km_manifest`` utterances plus the real LibriSpeech file) and the equality counts
frames that change cluster under realistic assignments; the fraction would differ with
mHuBERT-25Hz's weights.

Timing: the real 9.1 s LibriSpeech utterance, ``--rounds`` rounds, each running every path once,
the order rotated every round (so drift of the machine's load hits every path alike); median and
min per path, ratio = reference ÷ ours (> 1: ours faster). Units equal: per path, against the
reference (fp32 paths) and against our fp32 (low-precision paths), on the real file and on the
first ``--num_utts`` utterances of ``--manifest``.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_units_vs_reference.py --manifest corpus50/manifest.jsonl \\
        [--km_manifest corpus_km/manifest.jsonl] [--centers centers.npy] [--rounds 7] [--precisions fp32,bf16]

``--centers``: the fitted centres are saved there and reused by later runs (same model, seed 0).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

REAL = "/work/shared/data/real/7143-88743-0029.flac"
LAYER = 11


def hubert_base_dir(path: str) -> str:
    """Saves a random HuBERT-base-25Hz transformers directory (seed 0) at ``path``."""
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(0)
    cfg = HubertConfig(conv_dim=[512] * 8, conv_stride=[5, 2, 2, 2, 2, 2, 2, 2], conv_kernel=[10, 3, 3, 3, 3, 2, 2, 2])
    HubertModel(cfg).eval().save_pretrained(path)
    return path


def machine() -> str:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_tokenizers import cpu_name

    return (f"{cpu_name()}; {os.cpu_count()} CPUs; torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}), "
            f"{torch.get_num_threads()} thread(s)")


def load(path: str) -> np.ndarray:
    from spiritlm.audio import load_audio

    return load_audio(path)


def manifest_audio(manifest: str, n: int) -> list[np.ndarray]:
    from spiritlm.corpus.manifest import read_audio_manifest

    return [load(it.audio) for it in read_audio_manifest(manifest)[:n]]


def main(argv=None) -> dict:
    """Prints the table; returns the rows (``{"rows": [...], ...}``)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", required=True, help="utterances for the unit equality (e.g. 50 synthetic ones)")
    ap.add_argument("--num_utts", type=int, default=50)
    ap.add_argument("--km_manifest", help="utterances whose reference features fit the k-means (default: --manifest)")
    ap.add_argument("--km_utts", type=int, default=100)
    ap.add_argument("--clusters", type=int, default=500)
    ap.add_argument("--centers", help=".npy file of the centres: loaded if present, else fitted and saved")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--precisions", default="fp32,bf16", help="our paths (comma-separated)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--real", default=REAL, help="the real utterance (timed, and its units compared)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from spiritlm.tokenizers.features import FeatureConfig, load_backend
    from spiritlm.tokenizers.kmeans import KMeansConfig, train_kmeans
    from spiritlm.tokenizers.speech_tokenizer import UnitConfig, UnitTokenizer
    from transformers import HubertModel

    print(f"command: {' '.join([os.path.basename(sys.executable)] + sys.argv)}")
    print(f"machine: {machine()}; load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    tmp = tempfile.mkdtemp(prefix="hubert_base_")
    ckpt = hubert_base_dir(os.path.join(tmp, "hubert"))

    ref = HubertModel.from_pretrained(ckpt).eval()
    ref.encoder.layers = ref.encoder.layers[:LAYER]  # as fairseq's output_layer=11: layer 12 is never run

    @torch.inference_mode()
    def ref_feats(w: np.ndarray) -> torch.Tensor:
        return ref(torch.from_numpy(w)[None], output_hidden_states=True).hidden_states[LAYER][0]

    real = load(args.real)
    evals = manifest_audio(args.manifest, args.num_utts)
    if args.centers and os.path.exists(args.centers):
        centers = np.load(args.centers)
        print(f"k-means: {centers.shape[0]} centres from {args.centers}")
    else:
        km = [real] + manifest_audio(args.km_manifest or args.manifest, args.km_utts)
        t = time.perf_counter()
        feats = [ref_feats(w).numpy() for w in km]
        centers = train_kmeans(feats, KMeansConfig(n_clusters=args.clusters, n_init=3, max_frames=None, seed=0, batch_size=4096))
        print(f"k-means: {args.clusters} centres fitted on the reference's features of {len(km)} utterances "
              f"({sum(len(f) for f in feats)} frames, {time.perf_counter() - t:.0f} s)")
        if args.centers:
            np.save(args.centers, centers)
    C = torch.from_numpy(centers).T.contiguous()  # (D, K)
    Cnorm = (C**2).sum(0, keepdim=True)

    def ref_units(w: np.ndarray) -> np.ndarray:
        x = ref_feats(w)
        return ((x**2).sum(1, keepdim=True) - 2 * x @ C + Cnorm).argmin(1).numpy()

    cfg = UnitConfig(features=FeatureConfig(backend="hubert", checkpoint=ckpt, layer=LAYER))
    ours = {p: UnitTokenizer(load_backend(cfg.features, "cpu", p), centers, cfg) for p in args.precisions.split(",") if p}

    def our_units(tok):
        return lambda w: tok.encode([w])[0]

    paths = {"reference (transformers, fp32)": ref_units, **{f"UnitTokenizer {p}": our_units(t) for p, t in ours.items()}}

    # unit equality
    with torch.inference_mode():
        units = {name: [fn(w) for w in [real] + evals] for name, fn in paths.items()}
        f32 = ours.get("fp32")
        feat_err = None
        if f32 is not None:
            feat_err = float((f32.backend.extract([real])[0] - ref_feats(real).numpy()).__abs__().max())

    def equal(a, b, sl):
        x, y = np.concatenate(a[sl]), np.concatenate(b[sl])
        return 100 * float(np.mean(x == y))

    # timing on the real file, rotating the order each round
    names = list(paths)
    times = {n: [] for n in names}
    with torch.inference_mode():
        for fn in paths.values():
            fn(real)  # warm-up
        for r in range(args.rounds):
            for n in names[r % len(names):] + names[: r % len(names)]:
                t = time.perf_counter()
                paths[n](real)
                times[n].append(time.perf_counter() - t)
    secs = len(real) / 16000
    rname = names[0]
    rmed, rmin = statistics.median(times[rname]), min(times[rname])
    print(f"HuBERT-base-25Hz (random weights) layer {LAYER} + k-means {centers.shape[0]}: {os.path.basename(args.real)} "
          f"({secs:.1f} s) timed, {args.rounds} rounds alternating; equality also on {len(evals)} utterances of "
          f"{args.manifest} ({sum(len(w) for w in evals) / 16000:.1f} s)")
    print(f"| path | median s | min s | ratio (median) | ratio (min) | units = reference, real / {len(evals)} utts | "
          f"units = our fp32, real / {len(evals)} utts |")
    print("|---|---|---|---|---|---|---|")
    base32 = units.get("UnitTokenizer fp32")
    rows = []
    for n in names:
        med, mn = statistics.median(times[n]), min(times[n])
        eq = {"ref_real": equal(units[n], units[rname], slice(0, 1)), "ref_utts": equal(units[n], units[rname], slice(1, None))}
        if base32 is not None:
            eq.update(fp32_real=equal(units[n], base32, slice(0, 1)), fp32_utts=equal(units[n], base32, slice(1, None)))
        eq_ref = f"{eq['ref_real']:.2f}% / {eq['ref_utts']:.2f}%"
        eq_32 = f"{eq['fp32_real']:.2f}% / {eq['fp32_utts']:.2f}%" if base32 is not None else "-"
        print(f"| {n} | {med:.3f} | {mn:.3f} | {rmed / med:.2f}x | {rmin / mn:.2f}x | {eq_ref} | {eq_32} |")
        rows.append({"path": n, "median_s": med, "min_s": mn, "ratio_median": rmed / med, "ratio_min": rmin / mn,
                     "times_s": times[n], "units_equal_pct": eq})
    if feat_err is not None:
        print(f"fp32 features vs the reference on the real file: max |diff| {feat_err:.2e}")
    print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())} (2-core machine shared with other jobs)")
    return {"audio_s": secs, "num_utts": len(evals), "feature_max_abs_diff": feat_err, "rows": rows}


if __name__ == "__main__":
    main()
