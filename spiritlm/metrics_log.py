"""Training metrics of a run: ``metrics.jsonl`` (one record per kind and step) and TensorBoard, and reading them back.

Shared by the LM recipe (:mod:`spiritlm.train.recipe`) and the vocoder's (:mod:`spiritlm.vocoder.train`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from spiritlm.atomic import atomic_file


class _Ranked(Protocol):
    @property
    def main(self) -> bool: ...


class MetricsLog:
    """``metrics.jsonl`` (one record per kind and step) and TensorBoard, written by rank 0."""

    def __init__(self, run_dir: Path, d: _Ranked, tensorboard: bool) -> None:
        self.d = d
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        if d.main and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tb"))
            except ImportError:  # pragma: no cover - tensorboard is a dependency
                self.tb = None

    def start(self, resumed_step: int | None) -> None:
        """A fresh run starts an empty file; a resumed one keeps the records up to its checkpoint
        (those after it are from the lost part of the interrupted run and will be redone)."""
        if not self.d.main or not self.path.exists():
            return
        if resumed_step is None:
            self.path.unlink()
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line torn by a kill: its step is redone anyway
                continue
            if isinstance(rec, dict) and int(rec.get("step", 0)) <= resumed_step:
                kept.append(line)
        _write_atomic(self.path, "".join(f"{ln}\n" for ln in kept))

    def record(self, kind: str, step: int, values: dict[str, float]) -> None:
        if not self.d.main:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"kind": kind, "step": step, **values}) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(f"{kind}/{k}", v, step)

    def audio(self, tag: str, wav: np.ndarray, step: int, sample_rate: int) -> None:
        """An audio sample (float waveform, clipped to [-1, 1]) in TensorBoard."""
        if self.tb is not None:
            import torch

            self.tb.add_audio(tag, torch.from_numpy(np.clip(wav, -1, 1))[None], step, sample_rate)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_history(path: Path) -> dict[str, Any]:
    """Per-step train and validation records of ``metrics.jsonl`` (the last record of a step wins;
    a line torn by a kill is skipped): the one reader of the file (trainers' ``metrics.json``, the
    demo's report)."""
    train: dict[int, dict[str, float]] = {}
    val: dict[int, dict[str, float]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not (isinstance(rec, dict) and "kind" in rec and "step" in rec):
                continue
            kind, step = rec.pop("kind"), rec.pop("step")
            (train if kind == "train" else val)[step] = rec
    return {"train": {str(k): v for k, v in sorted(train.items())}, "val": {str(k): v for k, v in sorted(val.items())}}


def _write_atomic(path: Path, text: str) -> None:
    with atomic_file(path) as f:
        f.write(text)
