"""Training the LM: the recipe's config and parser (:mod:`~spiritlm.train.config`), its data
(:mod:`~spiritlm.train.data`), the recipe (:mod:`~spiritlm.train.recipe`), its checkpoints
(:mod:`~spiritlm.train.checkpoint`) and the ``spiritlm train`` command (:mod:`~spiritlm.train.cli`).

    from spiritlm.train import load_train_config, train
    summary = train(load_train_config("recipes/configs/tiny-text.yaml", ["train.max_steps=10"]))
"""

from spiritlm.constants import SUBSETS
from spiritlm.train.config import (
    DataSection,
    ModelSection,
    OptimSection,
    RecipeError,
    TrainConfig,
    TrainSection,
    load_train_config,
    parse_recipe,
)


def train(config, **kwargs):
    """See :func:`spiritlm.train.recipe.train` (imported lazily: it pulls in torch and fairseq2)."""
    from spiritlm.train.recipe import train as _train

    return _train(config, **kwargs)


__all__ = [
    "DataSection",
    "ModelSection",
    "OptimSection",
    "RecipeError",
    "SUBSETS",
    "TrainConfig",
    "TrainSection",
    "load_train_config",
    "parse_recipe",
    "train",
]
