"""``spiritlm train``: the command that reads a recipe and runs :class:`~spiritlm.train.recipe.TrainRecipe`.

Usage (the recipe's keys are this command's options; later options override earlier ones)::

    spiritlm train --config recipes/configs/tiny-text.yaml
    spiritlm train --config recipes/configs/tiny-interleaved.yaml --optim.lr 1e-4 --train.max_steps 50
    spiritlm train --config recipes/configs/tiny-text.yaml --print_config   # the resolved recipe

Resuming is automatic: rerunning the same command continues from the newest complete checkpoint
in ``--train.output_dir`` (``--train.resume false`` starts over). The optimiser settings of a
resumed run must equal its ``config.yaml``.

Several processes (DDP, or FSDP with ``--train.parallel fsdp``)::

    # one node, 8 GPUs
    torchrun --standalone --nproc_per_node 8 -m spiritlm.cli train --config recipes/configs/base-7b.yaml
    # 4 nodes: run on every node (or use recipes/slurm/train.slurm, which does this with srun)
    torchrun --nnodes 4 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint $HEAD:29500 \\
        --rdzv_id $JOB -m spiritlm.cli train --config recipes/configs/base-7b.yaml

The recipe is parsed by :func:`spiritlm.train.config.parse_recipe`, the one parser of recipes
(:func:`spiritlm.train.load_train_config` is the same parser for Python callers). Paths and
values are checked before torch and fairseq2 are imported, so a typo costs a second.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence

from spiritlm.train.config import SECTIONS, check_inputs, parse_recipe


def train_command(argv: Sequence[str], prog: str = "spiritlm train") -> None:
    """Train the LM from a recipe (--config recipes/configs/NAME.yaml, then --section.key value overrides).

    The options are the recipe's four sections, each key an option (--optim.lr 1e-4); see
    --help for every key.

    Args:
        model: the model: --model.preset, --model.overrides, --model.vocab_size,
            --model.init_from, --model.new_rows_noise_std, --model.seed.
        data: the token data of `spiritlm data build`: --data.data_dir, --data.val_dir, …
        optim: AdamW and the learning-rate schedule: --optim.lr, --optim.warmup_steps, …
        train: the run: --train.output_dir, --train.max_steps, --train.resume, …
    """
    config = parse_recipe(list(argv), prog=prog)
    check_inputs(config)
    from spiritlm.train.recipe import TrainRecipe  # the slow imports (torch, fairseq2)

    summary = TrainRecipe(config).run()
    if os.environ.get("RANK", "0") == "0":
        print(f"[spiritlm train] done: step {summary['final_step']}, run directory {summary['output_dir']}")


train_command.cli_argv = True  # type: ignore[attr-defined]  # spiritlm.cli passes the raw arguments
# What the command's options are (for --help checks and readers): the recipe's sections.
train_command.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=cls) for name, cls in SECTIONS.items()]
)
COMMANDS = train_command
