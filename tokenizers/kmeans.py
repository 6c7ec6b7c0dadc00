"""Unit quantizers: k-means (training with scikit-learn, GSLM/Meta file format) and Meta's linear quantizer.

Two file layouts are read (both with ``torch.load(weights_only=True)``; :func:`load_quantizer`
detects which from the file's keys):

* **k-means** (GSLM, Meta's ``KmeansModel``): ``{"cluster_centers": numpy array (K, D),
  "n_clusters": K}``; numpy arrays are rebuilt through an allow-list of numpy globals only.
  Units are the nearest centre.
* **linear quantizer** (Meta's released ``hubert_25hz/L11_quantizer_500.pt``):
  ``{"model_cfg": {"vocab_size": V, "dim": D, "upstream_dim": U}, "model_weight": state_dict}``
  of an MLP ``Linear(D, D - m//4)``, LeakyReLU, ``Linear(D - m//4, D - m//2)``, LeakyReLU,
  ``Linear(D - m//2, V + 1)`` with ``m = U - (V + 1)`` (state-dict keys ``0.*``, ``2.*``,
  ``4.*``). Logit ``V`` is a CTC blank. Units are the arg-max; a frame whose arg-max is the
  blank takes the unit of the nearest non-blank frame before it, cyclically within the
  utterance (so blanks at the start take the utterance's last non-blank unit) — the fixed point
  of Meta's ``code[blank] = roll(code, 1)[blank]`` on one utterance. An utterance with no
  non-blank frame keeps the blank id ``V`` everywhere, as Meta's loop leaves it.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import UserError

logger = logging.getLogger(__name__)


class QuantizerError(UserError, ValueError):
    """A quantizer file that cannot be read (its message names the file)."""



class TooFewFramesError(UserError, ValueError):
    """Fewer training frames than clusters: the corpus is too small for the preset (a one-line CLI error)."""

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
        raise TooFewFramesError(f"k-means: {x.shape[0]} frames for {cfg.n_clusters} clusters: too little training audio for the preset (--manifest, --preset)")
    km = MiniBatchKMeans(
        n_clusters=cfg.n_clusters, init=cfg.init, batch_size=cfg.batch_size, max_iter=cfg.max_iter,
        max_no_improvement=cfg.max_no_improvement, n_init=cfg.n_init,
        reassignment_ratio=cfg.reassignment_ratio, random_state=cfg.seed, compute_labels=False,
        tol=0.0, verbose=0,
    )
    km.fit(x)
    return km.cluster_centers_.astype(np.float32)


def _inertia(x: np.ndarray, centers: np.ndarray, rows: int = 4096) -> float:
    """Sum of squared distances of the rows of ``x (N, D)`` to their nearest centre (float64,
    ``rows`` rows at a time: memory is a block, not ``N x K``)."""
    c = centers.astype(np.float64)
    c2 = (c**2).sum(1)[None]
    total = 0.0
    for i in range(0, len(x), rows):
        b = x[i : i + rows].astype(np.float64)
        d = (b**2).sum(1, keepdims=True) - 2 * b @ c.T + c2
        total += float(np.maximum(d.min(1), 0).sum())
    return total


# long: one seeded schedule (init draws, epochs, early stop) sharing one RandomState and one estimator, as MiniBatchKMeans.fit's; its order is the result
def train_kmeans_chunks(read_rows, n_rows: int, cfg: KMeansConfig, progress: bool = True) -> tuple[np.ndarray, dict]:
    """Fits MiniBatchKMeans with ``partial_fit`` over chunks of a frame sample read on demand.

    Only chunks are ever in memory: ``read_rows(rows)`` returns the sample's rows ``rows``
    (sorted int64 positions in ``[0, n_rows)``) as a ``(len(rows), D)`` float32 array, e.g.
    from a file on disk (:meth:`spiritlm.tokenizers.shards.FrameShards.write_sample`).

    The schedule is ``MiniBatchKMeans.fit``'s (GSLM's settings in ``cfg``), made of reads:

    * initialisation: ``cfg.n_init`` k-means++ draws, each on ``init_size = 3 x batch_size``
      rows drawn at random (as ``fit`` draws them), scored on another ``init_size`` rows; the
      best one starts the fit. The largest read is these ``init_size`` rows.
    * updates: each epoch (at most ``cfg.max_iter``) visits the sample in a fresh random order,
      one ``partial_fit`` step per chunk of ``batch_size`` rows (``fit`` draws its mini-batches
      with replacement instead; a permutation sees every row once per epoch);
    * early stop as ``fit``'s: the chunk's inertia under the current centres, averaged
      exponentially (weight ``2 batch_size / (n_rows + 1)``), has not improved for
      ``cfg.max_no_improvement`` chunks.

    ``progress``: a tqdm bar (for 200 chunks or more). Same seed, same rows, same centres.
    Returns float32 centres ``(n_clusters, D)`` and
    ``{"steps", "epochs", "early_stop", "init_inertia"}``.
    """
    from sklearn.cluster import MiniBatchKMeans, kmeans_plusplus

    n, K = int(n_rows), cfg.n_clusters
    if n < K:
        raise TooFewFramesError(f"k-means: {n} frames for {K} clusters: too little training audio for the preset (--manifest, --preset)")
    batch = min(cfg.batch_size, n)
    init_size = min(max(3 * batch, 3 * K), n)  # MiniBatchKMeans' default init_size
    rs = np.random.RandomState(cfg.seed)
    valid = read_rows(np.sort(rs.randint(0, n, init_size)))
    best, best_inertia = None, np.inf
    for _ in range(max(1, cfg.n_init)):
        x0 = read_rows(np.sort(rs.randint(0, n, init_size)))
        if cfg.init == "k-means++":
            c, _ = kmeans_plusplus(x0, K, random_state=rs)
        elif cfg.init == "random":
            c = x0[rs.choice(len(x0), K, replace=False)]
        else:
            raise ValueError(f"k-means: unknown init {cfg.init!r} (k-means++ or random)")
        inertia = _inertia(valid, c)
        if inertia < best_inertia:
            best, best_inertia = c, inertia
        del x0
    del valid
    km = MiniBatchKMeans(n_clusters=K, init=best, n_init=1, batch_size=batch, reassignment_ratio=cfg.reassignment_ratio,
                         random_state=rs, compute_labels=False, tol=0.0, verbose=0)
    rng = np.random.default_rng(cfg.seed)
    per_epoch = -(-n // batch)
    alpha = min(batch * 2.0 / (n + 1), 1.0)
    ewa = ewa_min = None
    no_improvement, step, stopped = 0, 0, False
    from tqdm import tqdm

    bar = tqdm(total=cfg.max_iter * per_epoch, desc="k-means", unit="chunk", leave=False, disable=not progress or cfg.max_iter * per_epoch < 200)
    for epoch in range(cfg.max_iter):
        perm = rng.permutation(n)
        for c in range(per_epoch):
            x = read_rows(np.sort(perm[c * batch : (c + 1) * batch]))
            # fit's batch inertia: the chunk under the centres before its update (step 1's,
            # the initialisation's, is not counted)
            inertia = -km.score(x) / len(x) if step else None
            km.partial_fit(x)
            step += 1
            bar.update()
            if inertia is None:
                continue
            ewa = inertia if ewa is None else ewa * (1 - alpha) + inertia * alpha
            if ewa_min is None or ewa < ewa_min:
                ewa_min, no_improvement = ewa, 0
            else:
                no_improvement += 1
            if cfg.max_no_improvement is not None and no_improvement >= cfg.max_no_improvement:
                stopped = True
                break
        if stopped:
            break
    bar.close()
    info = {"steps": step, "epochs": round(step / per_epoch, 2), "early_stop": stopped, "init_inertia": best_inertia / init_size}
    logger.info(f"[train] k-means: {step} partial_fit steps of {batch} frames ({info['epochs']} passes over {n} frames"
                + (", stopped: no improvement" if stopped else "") + ")")
    return km.cluster_centers_.astype(np.float32), info


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


def _torch_load(path: str):
    """``torch.load(weights_only=True)`` with numpy arrays allowed (k-means files hold one)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)


def load_kmeans(path: str | os.PathLike) -> np.ndarray:
    """Reads a k-means file in Meta's format; returns float32 centres ``(K, D)``.

    Raises:
        FileNotFoundError / ValueError naming the file.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: k-means file not found")
    try:
        obj = _torch_load(path)
    except Exception as exc:
        raise QuantizerError(f"{path}: not a k-means file in Meta's format ({str(exc).splitlines()[0]})") from None
    if not isinstance(obj, dict) or "cluster_centers" not in obj:
        raise QuantizerError(f"{path}: expected a dict with 'cluster_centers' and 'n_clusters'")
    return _centers_from(obj, path)


def _centers_from(obj: dict, path: str) -> np.ndarray:
    centers = np.asarray(obj["cluster_centers"] if not isinstance(obj["cluster_centers"], torch.Tensor) else obj["cluster_centers"].numpy(), dtype=np.float32)
    if centers.ndim != 2:
        raise QuantizerError(f"{path}: cluster_centers has shape {centers.shape}, expected (K, D)")
    if "n_clusters" in obj and int(obj["n_clusters"]) != centers.shape[0]:
        raise QuantizerError(f"{path}: n_clusters={obj['n_clusters']} but {centers.shape[0]} centres")
    return centers


class KMeansQuantizer(torch.nn.Module):
    """Nearest-centre assignment in torch (any device).

    ``forward(x, lengths=None)``: ``(..., D)`` features -> ``(...)`` int64 unit ids (``lengths``
    is accepted for symmetry with :class:`LinearQuantizer`; frames are independent here).
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

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if x.shape[-1] != self.dim:
            raise ValueError(f"k-means: features of dim {x.shape[-1]}, centres of dim {self.dim}")
        shape = x.shape[:-1]
        x = x.reshape(-1, self.dim).to(self.centers)
        d = (x**2).sum(-1, keepdim=True) - 2 * x @ self.centers.T + self.centers_sq[None, :]
        return d.argmin(-1).reshape(shape)


# ---------------------------------------------------------------------------------------------
# Meta's linear quantizer (MLP + CTC blank)
# ---------------------------------------------------------------------------------------------


def linear_quantizer_sizes(vocab_size: int, dim: int, upstream_dim: int) -> list[int]:
    """Widths of the MLP's layers: ``[D, D - m//4, D - m//2, V + 1]``, ``m = U - (V + 1)``."""
    m = int(upstream_dim) - (int(vocab_size) + 1)
    return [int(dim), int(dim) - m // 4, int(dim) - m // 2, int(vocab_size) + 1]


def fill_blanks(codes: np.ndarray | torch.Tensor, blank: int):
    """Replaces each ``blank`` in a 1-D unit sequence by the nearest non-blank unit before it,
    wrapping around (leading blanks take the last non-blank unit). A sequence of blanks only is
    returned unchanged. Same type as the input."""
    is_torch = isinstance(codes, torch.Tensor)
    c = codes.detach().cpu().numpy() if is_torch else np.asarray(codes)
    keep = np.flatnonzero(c != blank)
    if len(keep) == 0 or len(keep) == len(c):
        out = c.copy()
    else:
        # index of the last non-blank at or before each position; -1 before the first one
        last = np.maximum.accumulate(np.where(c != blank, np.arange(len(c)), -1))
        last[last < 0] = keep[-1]  # wrap around to the utterance's last non-blank frame
        out = c[last]
    return torch.as_tensor(out, device=codes.device) if is_torch else out


class LinearQuantizer(torch.nn.Module):
    """Meta's linear quantizer (see the module docstring).

    ``forward(x, lengths=None)``: ``(T, D)`` or ``(B, T, D)`` features -> ``(T,)`` / ``(B, T)``
    int64 units with blanks filled within each utterance's first ``lengths[b]`` frames (frames
    past the length are padding and left as they are).
    """

    def __init__(self, vocab_size: int, dim: int, upstream_dim: int):
        super().__init__()
        self.vocab_size, self.upstream_dim = int(vocab_size), int(upstream_dim)
        w = linear_quantizer_sizes(vocab_size, dim, upstream_dim)
        if min(w) <= 0:
            raise ValueError(f"linear quantizer: layer widths {w} from vocab_size={vocab_size}, dim={dim}, upstream_dim={upstream_dim}")
        self.encoder = torch.nn.Sequential(
            torch.nn.Linear(w[0], w[1]), torch.nn.LeakyReLU(), torch.nn.Linear(w[1], w[2]), torch.nn.LeakyReLU(), torch.nn.Linear(w[2], w[3])
        )

    @property
    def n_clusters(self) -> int:
        """Units it emits (the blank excluded)."""
        return self.vocab_size

    @property
    def dim(self) -> int:
        return int(self.encoder[0].in_features)

    @property
    def blank(self) -> int:
        return self.vocab_size

    def model_cfg(self) -> dict[str, int]:
        return {"vocab_size": self.vocab_size, "dim": self.dim, "upstream_dim": self.upstream_dim}

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if x.shape[-1] != self.dim:
            raise ValueError(f"linear quantizer: features of dim {x.shape[-1]}, quantizer input dim {self.dim}")
        codes = self.encoder(x.to(self.encoder[0].weight)).argmax(-1)
        if codes.ndim == 1:
            return fill_blanks(codes, self.blank)
        out = codes.clone()
        for b in range(codes.shape[0]):
            n = int(lengths[b]) if lengths is not None else codes.shape[1]
            out[b, :n] = fill_blanks(codes[b, :n], self.blank)
        return out

    def save(self, path: str | os.PathLike) -> None:
        """Writes Meta's layout ``{"model_cfg": {...}, "model_weight": state_dict}`` (atomically)."""
        from spiritlm.atomic import atomic_path

        sd = {k: v.detach().cpu().clone() for k, v in self.encoder.state_dict().items()}
        with atomic_path(path) as tmp:
            torch.save({"model_cfg": self.model_cfg(), "model_weight": sd}, tmp)

    @classmethod
    def from_checkpoint(cls, obj: dict, path: str = "<checkpoint>") -> LinearQuantizer:
        """Builds the quantizer from a loaded file in Meta's layout (``path`` names it in errors)."""
        cfg, sd = obj.get("model_cfg"), obj.get("model_weight")
        if not isinstance(cfg, dict) or not isinstance(sd, dict):
            raise QuantizerError(f"{path}: expected {{'model_cfg': {{...}}, 'model_weight': state_dict}} (Meta's linear quantizer)")
        try:
            q = cls(int(cfg["vocab_size"]), int(cfg["dim"]), int(cfg["upstream_dim"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise QuantizerError(f"{path}: model_cfg needs integer vocab_size, dim and upstream_dim ({exc})") from None
        want = q.encoder.state_dict()
        bad = [k for k in want if k not in sd] + [k for k in sd if k not in want]
        bad += [f"{k} {tuple(sd[k].shape)} != {tuple(want[k].shape)}" for k in want if k in sd and tuple(sd[k].shape) != tuple(want[k].shape)]
        if bad:
            raise QuantizerError(f"{path}: model_weight does not match model_cfg {q.model_cfg()}: {', '.join(bad[:4])}")
        q.encoder.load_state_dict({k: torch.as_tensor(v) for k, v in sd.items()}, strict=True)
        return q.eval()


def load_quantizer(path: str | os.PathLike) -> KMeansQuantizer | LinearQuantizer:
    """Reads a unit quantizer file in either layout (detected from its keys, see the module
    docstring). Raises FileNotFoundError / :class:`QuantizerError` naming the file."""
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: quantizer file not found")
    try:
        obj = _torch_load(path)
    except Exception as exc:
        raise QuantizerError(f"{path}: cannot be read with torch.load(weights_only=True) ({str(exc).splitlines()[0]})") from None
    if isinstance(obj, dict) and "cluster_centers" in obj:
        return KMeansQuantizer(_centers_from(obj, path))
    if isinstance(obj, dict) and "model_cfg" in obj and "model_weight" in obj:
        return LinearQuantizer.from_checkpoint(obj, path)
    keys = sorted(map(str, obj))[:6] if isinstance(obj, dict) else type(obj).__name__
    raise QuantizerError(
        f"{path}: neither a k-means file ('cluster_centers', 'n_clusters') nor Meta's linear quantizer "
        f"('model_cfg', 'model_weight'); found {keys}"
    )
