"""Logging (spiritlm/logs.py): APIs log, the command shows plain lines, rank 0 only."""

from __future__ import annotations

import logging

from spiritlm.logs import RankZeroFilter, console

log = logging.getLogger("spiritlm.tests.logs")


def test_console_shows_plain_lines_on_rank_0_and_drops_other_ranks(capsys, monkeypatch):
    log.info("before: nobody configured logging")  # an API called outside the command shows nothing
    with console():
        log.info("[stage] step 1: loss 0.5")
        log.warning("[stage] warning: a bad file")
        monkeypatch.setenv("RANK", "1")
        log.info("[stage] step 1 on rank 1")
        log.warning("[stage] warning on rank 1")
        monkeypatch.setenv("RANK", "0")
        with console():  # re-entrant: spiritlm demo runs commands inside its own
            log.info("nested")
    log.info("after: the handler is gone")
    out, err = capsys.readouterr()
    assert out.splitlines() == ["[stage] step 1: loss 0.5", "nested"]
    assert err.splitlines() == ["[stage] warning: a bad file", "[stage] warning on rank 1"]
    assert not any(isinstance(h, logging.Handler) and type(h).__name__ == "ConsoleHandler"
                   for h in logging.getLogger("spiritlm").handlers)


def test_rank_filter_reads_the_launchers_rank(monkeypatch):
    record = logging.LogRecord("spiritlm.x", logging.INFO, __file__, 1, "step %d", (3,), None)
    monkeypatch.setenv("RANK", "2")
    assert not RankZeroFilter().filter(record)
    monkeypatch.delenv("RANK")
    assert RankZeroFilter().filter(record)
