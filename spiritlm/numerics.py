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
* **instruction sets**: torch picks its CPU kernels by the machine's vector instructions
  (``torch.backends.cpu.get_cpu_capability()``: DEFAULT / AVX2 / AVX512), and so do MKL and
  oneDNN; the same training differs between ``ATEN_CPU_CAPABILITY=default`` and ``avx2``.

:data:`PINNED_ENV` are the environment variables that make two x86-64 machines with AVX2 or
better use the same kernels (set them before Python starts: they are read when torch, MKL and
oneDNN load). :func:`environment` is what a run records so that differing numbers can be traced.
"""

from __future__ import annotations

import os
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
