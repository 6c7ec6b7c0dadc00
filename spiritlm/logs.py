"""Logging: every API logs with ``logging.getLogger(__name__)``; the ``spiritlm`` command shows the lines.

APIs never print progress themselves and take no ``log`` callable: they log records under the
``spiritlm`` logger's tree (``spiritlm.tokenizers.train``, ``spiritlm.judges.train``, ...). Who
calls them decides what is shown: the ``spiritlm`` command (:func:`spiritlm.cli.main`) runs in
:func:`console`, which shows INFO lines as plain text on stdout and warnings and errors on
stderr, as the commands printed them before; a notebook or a test sees nothing unless it
configures logging (pytest's ``caplog`` captures the records).

Under ``torchrun`` every process runs the same code; :class:`RankZeroFilter` keeps the progress
records of rank 0 only (``RANK`` of the launcher's environment, what :class:`spiritlm.distributed.Dist`
reads), so a line is shown once, not once per process (warnings of any rank are kept). Progress bars stay tqdm's; a line logged
while a bar is drawn is written through ``tqdm.write`` so the bar is redrawn below it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator

__all__ = ["ConsoleHandler", "RankZeroFilter", "console", "process_rank"]

ROOT = "spiritlm"


def process_rank() -> int:
    """This process's rank in a launched job (``RANK``; 0 outside a launcher)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


class RankZeroFilter(logging.Filter):
    """Keeps INFO (and lower) records on rank 0 only; warnings and errors of every rank
    (``rank`` given, else :func:`process_rank` when filtering).

    Progress lines are the same on every rank, so one copy is enough; a warning names a
    problem of the process that logs it (its unreadable checkpoint file), which only it knows.

    >>> import logging
    >>> step = logging.LogRecord("spiritlm.x", logging.INFO, __file__, 1, "step 1", None, None)
    >>> RankZeroFilter(rank=1).filter(step), RankZeroFilter(rank=0).filter(step)
    (False, True)
    >>> RankZeroFilter(rank=1).filter(logging.LogRecord("spiritlm.x", logging.WARNING, __file__, 1, "bad file", None, None))
    True
    """

    def __init__(self, rank: int | None = None) -> None:
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or (process_rank() if self.rank is None else self.rank) == 0


class ConsoleHandler(logging.Handler):
    """Plain lines (the message only): INFO and below on ``sys.stdout``, warnings and errors on
    ``sys.stderr``, each looked up when a record is written (so a redirected or captured stream
    is honoured), through ``tqdm.write`` so a progress bar on the terminal is redrawn below."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
            tqdm.write(self.format(record), file=stream)
            stream.flush()
        except Exception:  # noqa: BLE001 - logging's rule: a failing handler reports and goes on
            self.handleError(record)


@contextlib.contextmanager
def console(level: int = logging.INFO) -> Iterator[logging.Logger]:
    """Shows the ``spiritlm`` loggers' records at ``level`` and above on the console (rank 0 only)
    while the block runs; the logger's handlers and level are restored after it.

    Re-entrant: inside another ``console()`` block (``spiritlm demo`` runs the other commands in
    its own process) it changes nothing, so no line is shown twice.
    """
    logger = logging.getLogger(ROOT)
    if any(isinstance(h, ConsoleHandler) for h in logger.handlers):
        yield logger
        return
    handler = ConsoleHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(RankZeroFilter())
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield logger
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
