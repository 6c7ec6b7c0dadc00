"""Which shard of a batch job this process is: the flags, else the launcher's environment.

Shared by the sharded, resumable commands (``spiritlm tokenize``, ``spiritlm corpus align``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping


def shard_from_env(shard: int | None, num_shards: int | None, env: Mapping[str, str] | None = None) -> tuple[int, int, str]:
    """``(shard, num_shards, source)``: the flags when given, else the launcher's environment.

    torchrun sets ``RANK``/``WORLD_SIZE``, Slurm's ``srun`` ``SLURM_PROCID``/``SLURM_NTASKS``;
    with neither, one shard. Giving only one of the two flags is an error.
    """
    from spiritlm.errors import UserError

    env = os.environ if env is None else env
    if shard is not None and num_shards is not None:
        return shard, num_shards, "flags"
    if (shard is None) != (num_shards is None):
        raise UserError("--shard and --num_shards go together (or leave both out to read RANK/WORLD_SIZE or SLURM_PROCID/SLURM_NTASKS)")
    for rank, world in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
        if env.get(rank) is not None and env.get(world) is not None:
            try:
                return int(env[rank]), int(env[world]), f"{rank}/{world}"
            except ValueError:
                raise UserError(f"{rank}={env[rank]!r} / {world}={env[world]!r}: not integers (pass --shard and --num_shards)") from None
    return 0, 1, "default"
