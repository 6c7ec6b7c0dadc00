"""A torchrun worker for tests/test_train.py: a training run whose data stream does not depend on
the world size, so runs with different numbers of processes can be compared step by step.

Every rank reads the same global batches (a one-rank :class:`PackedLoader` of ``--global_batch``
rows); rank ``r`` of ``W`` trains on rows ``r, r + W, …``. The recipe's loss is the mean over the
global batch's target tokens whatever ``W``, so 1 and 2 processes take the same steps (to float
summation order).

    torchrun --nproc_per_node N tests/train_worker.py OUT DATA_DIR MAX_STEPS [STOP_AFTER]
"""

from __future__ import annotations

import sys

from spiritlm.data import LoaderConfig, PackedLoader
from spiritlm.train import load_train_config
from spiritlm.train.recipe import TrainRecipe

GLOBAL_BATCH = 4
SEQ_LEN = 32


class GlobalBatches:
    """Rows ``rank::world_size`` of a world-size-independent stream of global batches."""

    def __init__(self, data_dir: str, rank: int, world_size: int, seq_len: int = SEQ_LEN, global_batch: int = GLOBAL_BATCH) -> None:
        self.inner = PackedLoader(LoaderConfig(data_dir=data_dir, seq_len=seq_len, batch_size=global_batch, seed=0))
        self.rank, self.world_size = rank, world_size

    def __iter__(self):
        return self

    def __next__(self):
        b = next(self.inner)
        return {"input_ids": b["input_ids"][self.rank :: self.world_size], "labels": b["labels"][self.rank :: self.world_size]}

    def state_dict(self):
        return {"inner": self.inner.state_dict()}

    def load_state_dict(self, state):
        self.inner.load_state_dict(state["inner"])

    def load_resharded(self, states):  # every rank read the same stream: any rank's position will do
        self.inner.load_state_dict(states[0]["inner"])


def main(out: str, data_dir: str, max_steps: str, stop_after: str | None = None) -> None:
    overrides = [
        "model.overrides={num_layers: 2, model_dim: 64, num_attn_heads: 4, num_key_value_heads: 2, ffn_inner_dim: 128}",
        f"data.data_dir={data_dir}", f"data.seq_len={SEQ_LEN}", f"train.output_dir={out}", f"train.max_steps={max_steps}",
        "train.log_every=1", "train.save_every=2", "train.parallel=fsdp", "train.progress=false", "train.tensorboard=false",
        "train.num_threads=1", "train.export_hf=false", "optim.lr=2e-3", "optim.warmup_steps=1",
    ] + ([f"train.stop_after={stop_after}"] if stop_after else [])
    config = load_train_config(None, overrides)
    TrainRecipe(config, loaders=lambda cfg, tok, rank, world: (GlobalBatches(data_dir, rank, world), {})).run()


if __name__ == "__main__":
    main(*sys.argv[1:])
