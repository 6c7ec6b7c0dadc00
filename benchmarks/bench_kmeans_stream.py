"""Units k-means: ``MiniBatchKMeans.fit`` on the in-memory sample against ``partial_fit`` over chunks read from disk.

The tiny preset's unit features (MFCC) of the first ``--train_utts`` training utterances and of
the test split are computed once into shards (``--work``, reused on a rerun); then, for each
seed, the same bounded sample (``--max_frames``, the preset's 200,000 by default) is clustered
both ways with the preset's k-means settings (GSLM's: 100 clusters here, batches of 10,000,
k-means++, 20 initialisations), and the test frames' units are scored against the phone
alignments (PNMI, phone purity; frame centres as in ``spiritlm.tokenizers.train``). Each line
also gives the wall time and the peak of numpy/Python allocations during the fit
(``tracemalloc``): the in-memory sample for ``fit``, a few chunks for ``partial_fit``.

Usage::

    python benchmarks/bench_kmeans_stream.py --manifest CORPUS/manifest.jsonl --train_utts 4000 \\
        --seeds 0,1,2 --work /tmp/kmeans-bench
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import tracemalloc
from dataclasses import replace

import numpy as np
import torch


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--train_utts", type=int, default=1000)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--max_frames", type=int, default=None, help="default: the tiny preset's")
    ap.add_argument("--work", required=True, help="folder for the feature shards and the samples (reused)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    from threadpoolctl import threadpool_limits

    from spiritlm.corpus.manifest import read_audio_manifest
    from spiritlm.tokenizers import metrics as M
    from spiritlm.tokenizers.features import load_backend
    from spiritlm.tokenizers.kmeans import KMeansQuantizer, train_kmeans, train_kmeans_chunks
    from spiritlm.tokenizers.shards import FrameShards, read_rows
    from spiritlm.tokenizers.train import SHARD_ITEMS, _shard_compute, make_preset

    items = read_audio_manifest(args.manifest)
    train = [it for it in items if it.split not in ("test", "valid")][: args.train_utts]
    test = [it for it in items if it.split == "test"]
    sel = train + test
    p = make_preset("tiny")
    km = p.units_kmeans if args.max_frames is None else replace(p.units_kmeans, max_frames=args.max_frames)
    shards = FrameShards(os.path.join(args.work, f"features-{len(train)}-{len(test)}"), len(sel), SHARD_ITEMS)
    shards.build(_shard_compute(sel, load_backend(p.features, "cpu").extract), "unit features")
    tr, te = list(range(len(train))), list(range(len(train), len(sel)))
    labs = [lab for i in te for lab in M.frame_labels(sel[i].segments("phones"), shards.length(i), 25.0, 0.0225)]
    test_feats = torch.from_numpy(np.concatenate([np.asarray(shards[i]) for i in te]))
    total = sum(shards.length(i) for i in tr)
    print(f"command: {' '.join([os.path.basename(sys.executable)] + sys.argv)}")
    print(f"{len(train)} training utterances ({total} frames of dim {test_feats.shape[1]}), {len(test)} test utterances "
          f"({len(labs)} frames); k-means: {km.n_clusters} clusters, batch {km.batch_size}, {km.n_init} inits, "
          f"max_frames {km.max_frames}; load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print(f"{'seed':>4}  {'path':<12} {'pnmi':>7} {'purity':>7} {'wall s':>7} {'peak alloc MB':>14}")
    rows: dict[str, list[tuple[float, float]]] = {"fit": [], "partial_fit": []}
    with threadpool_limits(limits=1, user_api="blas"):
        for seed in [int(s) for s in args.seeds.split(",")]:
            cfg = replace(km, seed=seed)
            path = os.path.join(args.work, f"sample-{len(train)}-{cfg.max_frames}-{seed}.npy")
            n, _ = shards.write_sample(path, tr, cfg.max_frames, seed)
            for name in ("fit", "partial_fit"):
                tracemalloc.start()
                t = time.time()
                if name == "fit":  # the previous path: the sample in memory, MiniBatchKMeans.fit
                    centers = train_kmeans(shards.sample(tr, cfg.max_frames, seed), replace(cfg, max_frames=None))
                else:
                    centers, _ = train_kmeans_chunks(lambda r: read_rows(path, r), n, cfg, progress=False)
                wall, peak = time.time() - t, tracemalloc.get_traced_memory()[1] / 2**20
                tracemalloc.stop()
                toks = KMeansQuantizer(centers)(test_feats).numpy().tolist()
                pn, pu = M.pnmi(labs, toks), M.purity(labs, toks)
                rows[name].append((pn, pu))
                print(f"{seed:>4}  {name:<12} {pn:7.4f} {pu:7.4f} {wall:7.1f} {peak:14.1f}", flush=True)
    for name, r in rows.items():
        a = np.array(r)
        print(f"{name:<12} mean over seeds: pnmi {a[:, 0].mean():.4f} ± {a[:, 0].std():.4f}, purity {a[:, 1].mean():.4f} ± {a[:, 1].std():.4f}")


if __name__ == "__main__":
    main()
