"""What decides the floating-point results of a CPU run, recorded beside its metrics, and how to pin it.

Same seed, same numbers holds on one machine with the same thread counts: every random draw in
the pipeline is seeded and the data order is fixed. Across machines two things change the last
bits of float32 arithmetic, and training amplifies them into different metrics:

* **thread counts**: torch splits reductions by intra-op thread (a 100-step conv training ends in
  another loss at the 7th significant digit with 2 threads than with 1 on the same machine);
  the commands take ``--threads`` (``spiritlm tokenizer train`` defaults to 1), and BLAS pools
  (NumPy, SciPy) are limited to one thread inside tokenizer training (scikit-learn's
  MiniBatchKMeans gave identical centres with 1-4 OpenMP threads here, so OpenMP, which is also
  torch's intra-op pool, follows ``--threads``).
  :func:`threads` is the one place that sets them: torch's intra-op pool and every BLAS and
  OpenMP pool threadpoolctl finds. threadpoolctl limits only the libraries loaded when the limit
  starts, and SciPy's own OpenBLAS loads lazily (a tokenizer run recorded one OpenBLAS pool at 1
  thread and another at 2), so it loads NumPy's, SciPy's and scikit-learn's pools first.
* **instruction sets**: torch picks its CPU kernels by the machine's vector instructions
  (``torch.backends.cpu.get_cpu_capability()``: DEFAULT / AVX2 / AVX512), and so do MKL and
  oneDNN; the same training differs between ``ATEN_CPU_CAPABILITY=default`` and ``avx2``.

:data:`PINNED_ENV` are the environment variables that make two x86-64 machines with AVX2 or
better use the same kernels (set them before Python starts: they are read when torch, MKL and
oneDNN load). :func:`environment` is what a run records so that differing numbers can be traced.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

#: Environment that pins kernel choice to AVX2 in torch, MKL and oneDNN (set before starting Python).
PINNED_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def environment() -> dict[str, Any]:
    """Versions, thread counts, CPU capability and pinning variables of this process (JSON-able)."""
    import numpy as np
    import torch

    out: dict[str, Any] = {
        "torch": torch.__version__,
        "numpy": np.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_count": os.cpu_count(),
        "pinned_env": {k: os.environ.get(k) for k in (*PINNED_ENV, "OMP_NUM_THREADS", "MKL_NUM_THREADS")},
    }
    try:
        import sklearn
        from threadpoolctl import threadpool_info

        out["sklearn"] = sklearn.__version__
        out["blas_openmp_threads"] = sorted({(p["internal_api"], p["num_threads"]) for p in threadpool_info()})
    except ImportError:  # pragma: no cover - scikit-learn is a dependency
        pass
    return out


def load_thread_pools() -> None:
    """Imports the libraries whose BLAS/OpenMP pools the stages use, so that a limit reaches them."""
    import numpy  # noqa: F401  (its OpenBLAS)
    import scipy.linalg  # noqa: F401  (SciPy's own OpenBLAS)

    with contextlib.suppress(ImportError):
        import sklearn.cluster  # noqa: F401  (scikit-learn's OpenMP runtime)


@contextlib.contextmanager
def threads(count: int | None) -> Iterator[None]:
    """Pins every CPU thread pool of this process to ``count`` inside the block, then restores them.

    torch's intra-op threads, and the BLAS (NumPy, SciPy) and OpenMP (scikit-learn, torch) pools
    that threadpoolctl sees. ``None`` or 0 leaves everything as it is. Used by every command that
    takes ``--threads``, so that the same seed and ``--threads`` give the same numbers whatever
    ``OMP_NUM_THREADS``/``OPENBLAS_NUM_THREADS`` the shell set. This is the one place that sets
    torch's thread count (``test_layout``).

    ``--threads N`` means this in every command (0: leave the pools as the environment set
    them); commands whose outputs later stages trust bit for bit default to 1
    (docs/reproducibility.md's table).

    >>> import torch
    >>> before = torch.get_num_threads()
    >>> with threads(1):
    ...     torch.get_num_threads()
    1
    >>> with threads(2):
    ...     torch.get_num_threads()
    2
    >>> torch.get_num_threads() == before
    True
    """
    if not count:
        yield
        return
    import torch
    from threadpoolctl import threadpool_limits

    load_thread_pools()
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        with threadpool_limits(limits=count):
            yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """The BLAS pools (NumPy, SciPy) run one thread inside the block; torch and OpenMP are left
    alone (torch's intra-op threads are OpenMP threads). The speech tokenizer's training default:
    the same numbers whatever the machine's core count."""
    from threadpoolctl import threadpool_limits

    load_thread_pools()  # a limit reaches only the BLAS libraries loaded when it starts
    with threadpool_limits(limits=1, user_api="blas"):
        yield
