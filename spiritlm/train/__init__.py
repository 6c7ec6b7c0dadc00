"""Training the LM: recipe config (:mod:`~spiritlm.train.config`), data adapter
(:mod:`~spiritlm.train.data`) and the loop (:mod:`~spiritlm.train.loop`).

    from spiritlm.train import load_train_config, train
    summary = train(load_train_config("recipes/configs/tiny-text.yaml", ["train.max_steps=10"]))
"""

from spiritlm.train.config import (
    DataSection,
    ModelSection,
    OptimSection,
    SUBSETS,
    TrainConfig,
    TrainSection,
    apply_overrides,
    load_train_config,
)


def train(config, **kwargs):
    """See :func:`spiritlm.train.loop.train` (imported lazily: it pulls in torch and fairseq2)."""
    from spiritlm.train.loop import train as _train

    return _train(config, **kwargs)


__all__ = [
    "DataSection",
    "ModelSection",
    "OptimSection",
    "SUBSETS",
    "TrainConfig",
    "TrainSection",
    "apply_overrides",
    "load_train_config",
    "train",
]
