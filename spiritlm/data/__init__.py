"""The LM's training data: token directories built from manifests and units, and loaders.

- :mod:`spiritlm.data.build`     ``build_dataset``: documents -> token ids -> shards + summary
- :mod:`spiritlm.data.shards`    the on-disk format (``TokenDir``, ``ShardWriter``, ``write_token_dir``)
- :mod:`spiritlm.data.loader`    ``PackedLoader`` (training) and ``ValidationLoader`` (needs torch)
- :mod:`spiritlm.data.inspect`   readable dumps of a token directory
- :mod:`spiritlm.data.synthetic` random manifests and units for tests and benchmarks
- :mod:`spiritlm.data.cli`       ``spiritlm data build | inspect | train-text-tokenizer``

Names are imported lazily so that ``spiritlm data build`` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "IGNORE_INDEX": "spiritlm.data.loader",
    "LoaderConfig": "spiritlm.data.loader",
    "PackedLoader": "spiritlm.data.loader",
    "ValidationLoader": "spiritlm.data.loader",
    "TokenDir": "spiritlm.data.shards",
    "write_token_dir": "spiritlm.data.shards",
    "build_dataset": "spiritlm.data.build",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'spiritlm.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))
