"""Padding and masks: the one place batches of variable-length sequences are built and masked.

* :func:`pad_batch`: ``B`` sequences ``(L_i, *rest)`` -> one ``(B, max L_i, *rest)`` tensor and
  the lengths, padded on the right (waveforms, features, units) or on the left (decoder
  prompts, so that every row's last token is at the same position), with
  ``torch.nn.utils.rnn.pad_sequence``;
* :func:`length_mask`: lengths -> the boolean mask of the valid positions.

Every stage pads through these (``tests/test_layout.py`` checks that the mask is defined once).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["length_mask", "pad_batch"]


def length_mask(lengths: Tensor, max_len: int | None = None) -> Tensor:
    """``(B,)`` lengths -> bool ``(B, max_len)``, True inside each sequence (``max_len``: the longest).

    >>> length_mask(torch.tensor([1, 3]), 3).tolist()
    [[True, False, False], [True, True, True]]
    >>> length_mask(torch.tensor([2, 0])).tolist()
    [[True, True], [False, False]]
    """
    max_len = int(lengths.max()) if max_len is None else max_len
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def pad_batch(
    seqs: Sequence[Tensor | np.ndarray | Sequence[Any]],
    *,
    dtype: torch.dtype | None = torch.float32,
    value: float = 0,
    side: str = "right",
    width: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Pads ``B`` sequences of shape ``(L_i, *rest)`` into one tensor.

    Args:
        seqs: tensors, arrays or lists (waveforms ``(samples_i,)``, frames ``(T_i, D)``, ids).
        dtype: the batch's dtype (float32: waveforms and features; ``torch.long``: ids; None: the
            tensors' own, on their own device).
        value: the padding value (0; a pad or EOS id for token batches).
        side: ``right`` (the valid part first) or ``left`` (the valid part last: decoder prompts).
        width: pad to at least this length (a shared frame count); None: the longest.

    Returns:
        ``(batch, lengths)``: ``(B, max(width, max_i L_i), *rest)`` and int64 ``(B,)`` on CPU.

    >>> batch, lengths = pad_batch([[1, 2, 3], [4]], dtype=torch.long, value=9, side="left")
    >>> batch.tolist(), lengths.tolist()
    ([[1, 2, 3], [9, 9, 4]], [3, 1])
    >>> pad_batch([np.ones(2)], width=4)[0].tolist()
    [[1.0, 1.0, 0.0, 0.0]]
    """
    tensors = [torch.as_tensor(s if isinstance(s, Tensor) else np.asarray(s), dtype=dtype) if dtype is not None
               else torch.as_tensor(s) for s in seqs]
    lengths = torch.tensor([t.shape[0] for t in tensors], dtype=torch.long)
    if not tensors:
        return torch.zeros(0, width or 0, dtype=dtype or torch.float32), lengths
    batch = torch.nn.utils.rnn.pad_sequence(tensors, batch_first=True, padding_value=value, padding_side=side)
    if width is not None and width > batch.shape[1]:
        shape = (batch.shape[0], width - batch.shape[1], *batch.shape[2:])
        fill = torch.full(shape, value, dtype=batch.dtype, device=batch.device)
        batch = torch.cat([batch, fill] if side == "right" else [fill, batch], dim=1)
    return batch, lengths
