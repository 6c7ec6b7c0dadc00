"""``spiritlm train``: continued pretraining of the LM from a YAML recipe.

Usage (the recipe's keys are this command's options; later options override earlier ones)::

    spiritlm train --config recipes/configs/tiny-text.yaml
    spiritlm train --config recipes/configs/tiny-interleaved.yaml --optim.lr 1e-4 --train.max_steps 50
    spiritlm train --config recipes/configs/tiny-text.yaml --print_config   # the resolved recipe

Resuming is automatic: rerunning the same command continues from the latest complete
checkpoint in ``train.output_dir`` (``--train.resume false`` starts over, after you remove or
change the directory).

Several processes (DDP, or FSDP with ``--train.parallel fsdp``)::

    # one node, 8 GPUs
    torchrun --standalone --nproc_per_node 8 -m spiritlm.cli train --config recipes/configs/base-7b.yaml
    # 4 nodes: run on every node (or use recipes/slurm/train.slurm, which does this with srun)
    torchrun --nnodes 4 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint $HEAD:29500 \\
        --rdzv_id $JOB -m spiritlm.cli train --config recipes/configs/base-7b.yaml

The Python API is :func:`spiritlm.train.train` on a :class:`spiritlm.train.TrainConfig`
(:func:`spiritlm.train.load_train_config` reads a recipe with ``"key=value"`` overrides).
"""

from __future__ import annotations

import dataclasses
import os

from spiritlm.train.config import DataSection, ModelSection, OptimSection, TrainConfig, TrainSection, validate


def train_fn(
    model: ModelSection = ModelSection(),
    data: DataSection = DataSection(),
    optim: OptimSection = OptimSection(),
    train: TrainSection = TrainSection(),
) -> None:
    """Train the LM from a recipe (``--config recipes/configs/NAME.yaml``, then ``--section.key value`` overrides).

    Args:
        model: the model: ``preset`` (tiny, llama2-7b, llama2-7b-base, llama2-7b-expressive),
            ``overrides`` (LLaMAConfig fields), ``vocab_size`` (tokenizer | text | N),
            ``init_from`` (Hugging Face / run / checkpoint directory; the vocabulary is extended
            with mean+noise rows when smaller), ``new_rows_noise_std``, ``seed``.
        data: the token data of ``spiritlm data build``: ``data_dir`` (train split),
            ``val_dir`` (validation split), ``tokenizer``, ``seq_len``, ``batch_size`` (per rank
            and micro-batch), ``subset_weights`` ({speech, text, interleaved}), ``val_batches``,
            ``val_subsets``, ``seed``.
        optim: AdamW and schedule: ``lr``, ``betas``, ``eps``, ``weight_decay``, ``schedule``
            (constant | cosine), ``warmup_steps``, ``min_lr_ratio``, ``grad_clip``,
            ``grad_accum``.
        train: the run: ``output_dir``, ``max_steps``, ``log_every``, ``val_every``,
            ``save_every``, ``keep_checkpoints``, ``seed``, ``dtype`` (auto | float32 |
            bfloat16), ``parallel`` (ddp | fsdp), ``activation_checkpointing``, ``resume``, ``stop_after``, ``export_hf``,
            ``tensorboard``, ``progress``, ``num_threads``.
    """
    from spiritlm.train.loop import train as run

    config = TrainConfig(
        model=dataclasses.replace(model), data=dataclasses.replace(data),
        optim=dataclasses.replace(optim), train=dataclasses.replace(train),
    )
    if isinstance(config.optim.betas, list):
        config.optim.betas = tuple(config.optim.betas)  # type: ignore[assignment]
    validate(config, "spiritlm train")
    summary = run(config)
    if os.environ.get("RANK", "0") == "0":
        print(f"[spiritlm train] done: step {summary['final_step']}, run directory {summary['output_dir']}")


COMMANDS = train_fn
