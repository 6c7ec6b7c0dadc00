"""k-means for discrete units: training (scikit-learn), Meta's file format, assignment in torch.

Meta's k-means file (e.g. ``hubert_25hz/L11_quantizer_500.pt``) is a torch file holding
``{"cluster_centers": numpy array (K, D), "n_clusters": K}``. It is loaded here with
``torch.load(weights_only=True)``, allow-listing only what numpy arrays need to be rebuilt.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class KMeansConfig:
    """MiniBatchKMeans settings; defaults are GSLM's (the recipe of HuBERT/Spirit LM units).

    Attributes:
        n_clusters: number of units (Spirit LM: 501 for HuBERT, 100 for style).
        init: centre initialisation.
        batch_size: mini-batch size (frames).
        max_iter: passes over the sample.
        max_no_improvement: early stop after this many mini-batches without improvement.
        n_init: initialisations tried (the best inertia is kept).
        reassignment_ratio: controls reassignment of rarely used centres.
        max_frames: frames sampled (uniformly, without replacement) for training; None = all.
        seed: random seed (sampling and sklearn).
    """

    n_clusters: int = 500
    init: str = "k-means++"
    batch_size: int = 10_000
    max_iter: int = 100
    max_no_improvement: int = 100
    n_init: int = 20
    reassignment_ratio: float = 0.5
    max_frames: int | None = 1_000_000
    seed: int = 0


def sample_frames(features: Sequence[np.ndarray] | np.ndarray, max_frames: int | None, seed: int) -> np.ndarray:
    """Stacks per-utterance ``(frames_i, D)`` arrays and samples at most ``max_frames`` rows."""
    x = features if isinstance(features, np.ndarray) else np.concatenate([np.asarray(f) for f in features], 0)
    x = np.asarray(x, dtype=np.float32)
    if max_frames is not None and x.shape[0] > max_frames:
        idx = np.random.default_rng(seed).choice(x.shape[0], size=max_frames, replace=False)
        x = x[np.sort(idx)]
    return x


def train_kmeans(features: Sequence[np.ndarray] | np.ndarray, cfg: KMeansConfig) -> np.ndarray:
    """Fits MiniBatchKMeans on a frame sample.

    Args:
        features: ``(N, D)`` frames or a list of per-utterance ``(frames_i, D)`` arrays.
        cfg: settings.

    Returns:
        float32 centres ``(n_clusters, D)``.
    """
    from sklearn.cluster import MiniBatchKMeans

    x = sample_frames(features, cfg.max_frames, cfg.seed)
    if x.shape[0] < cfg.n_clusters:
        raise ValueError(f"k-means: {x.shape[0]} frames for {cfg.n_clusters} clusters")
    km = MiniBatchKMeans(
        n_clusters=cfg.n_clusters, init=cfg.init, batch_size=cfg.batch_size, max_iter=cfg.max_iter,
        max_no_improvement=cfg.max_no_improvement, n_init=cfg.n_init,
        reassignment_ratio=cfg.reassignment_ratio, random_state=cfg.seed, compute_labels=False,
        tol=0.0, verbose=0,
    )
    km.fit(x)
    return km.cluster_centers_.astype(np.float32)


def save_kmeans(path: str | os.PathLike, centers: np.ndarray) -> None:
    """Writes Meta's k-means format: ``{"cluster_centers": array (K, D), "n_clusters": K}``."""
    centers = np.ascontiguousarray(centers, dtype=np.float32)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save({"cluster_centers": centers, "n_clusters": int(centers.shape[0])}, str(path))


def _numpy_safe_globals() -> list:
    out = [np.ndarray, np.dtype]
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        try:
            m = importlib.import_module(mod)
            out.append(m._reconstruct)
        except (ImportError, AttributeError):
            pass
    # numpy >= 1.25 pickles dtypes through their classes, e.g. numpy.dtypes.Float32DType
    if hasattr(np, "dtypes"):
        out += [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
    return out


def load_kmeans(path: str | os.PathLike) -> np.ndarray:
    """Reads a k-means file in Meta's format; returns float32 centres ``(K, D)``.

    Raises:
        FileNotFoundError / ValueError naming the file.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: k-means file not found")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.serialization.safe_globals(_numpy_safe_globals()):
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ValueError(f"{path}: not a k-means file in Meta's format ({str(exc).splitlines()[0]})") from None
    if not isinstance(obj, dict) or "cluster_centers" not in obj:
        raise ValueError(f"{path}: expected a dict with 'cluster_centers' and 'n_clusters'")
    centers = np.asarray(obj["cluster_centers"] if not isinstance(obj["cluster_centers"], torch.Tensor) else obj["cluster_centers"].numpy(), dtype=np.float32)
    if centers.ndim != 2:
        raise ValueError(f"{path}: cluster_centers has shape {centers.shape}, expected (K, D)")
    if "n_clusters" in obj and int(obj["n_clusters"]) != centers.shape[0]:
        raise ValueError(f"{path}: n_clusters={obj['n_clusters']} but {centers.shape[0]} centres")
    return centers


class KMeansQuantizer(torch.nn.Module):
    """Nearest-centre assignment in torch (any device).

    ``forward(x)``: ``(..., D)`` features -> ``(...)`` int64 unit ids.
    """

    def __init__(self, centers: np.ndarray | torch.Tensor):
        super().__init__()
        c = torch.as_tensor(np.asarray(centers, dtype=np.float32))
        self.register_buffer("centers", c)
        self.register_buffer("centers_sq", (c**2).sum(-1))

    @property
    def n_clusters(self) -> int:
        return int(self.centers.shape[0])

    @property
    def dim(self) -> int:
        return int(self.centers.shape[1])

    @classmethod
    def load(cls, path: str | os.PathLike) -> KMeansQuantizer:
        return cls(load_kmeans(path))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.dim:
            raise ValueError(f"k-means: features of dim {x.shape[-1]}, centres of dim {self.dim}")
        shape = x.shape[:-1]
        x = x.reshape(-1, self.dim).to(self.centers)
        d = (x**2).sum(-1, keepdim=True) - 2 * x @ self.centers.T + self.centers_sq[None, :]
        return d.argmin(-1).reshape(shape)
