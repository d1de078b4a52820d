"""project/logging.py: Celery's lines about Terminus's own periodic tasks are bookkeeping, logged at DEBUG."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest
from celery.app.trace import LOG_SUCCESS
from celery.app.trace import logger as trace_logger
from celery.beat import logger as beat_logger
from celery.worker.strategy import logger as strategy_logger

from project.logging import BookkeepingAtDebug


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """What the three Celery loggers write, through the project's filter, at INFO."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    loggers = (trace_logger, beat_logger, strategy_logger)
    saved = [(logger.level, logger.propagate) for logger in loggers]
    bookkeeping = BookkeepingAtDebug()
    for logger in loggers:
        logger.addHandler(handler)
        logger.addFilter(bookkeeping)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    yield stream
    for logger, (level, propagate) in zip(loggers, saved, strict=True):
        logger.removeHandler(handler)
        logger.removeFilter(bookkeeping)
        logger.setLevel(level)
        logger.propagate = propagate


def succeeded(name: str) -> dict[str, object]:
    return {"id": "1", "name": name, "return_value": "{}", "runtime": 0.01}


@pytest.mark.parametrize("name", ["terminus.cron.reaper", "terminus.health.canary", "terminus.alerts.flush"])
def test_celerys_lines_about_a_bookkeeping_task_are_not_shown_at_info(captured, name):
    strategy_logger.info("Task %(name)s[%(id)s] received", {"id": "1", "name": name})
    trace_logger.info(LOG_SUCCESS, succeeded(name))
    beat_logger.info("Scheduler: Sending due task %s (%s)", name.rsplit(".", 1)[-1], name)
    assert captured.getvalue() == ""


def test_they_are_debug_lines_shown_at_log_level_debug(captured):
    trace_logger.setLevel(logging.DEBUG)
    trace_logger.info(LOG_SUCCESS, succeeded("terminus.cron.reaper"))
    assert captured.getvalue().startswith("DEBUG Task terminus.cron.reaper[1] succeeded")


def test_the_lines_of_submitted_jobs_and_a_bookkeeping_failure_keep_their_level(captured):
    trace_logger.info(LOG_SUCCESS, succeeded("diagnostics.sleep"))
    strategy_logger.info("Task %(name)s[%(id)s] received", {"id": "2", "name": "terminus.dead_letter.record"})
    trace_logger.error("Task %(name)s[%(id)s] raised", {"id": "3", "name": "terminus.cron.reaper"})
    assert captured.getvalue().splitlines() == [
        "INFO Task diagnostics.sleep[1] succeeded in 0.01s: {}",
        "INFO Task terminus.dead_letter.record[2] received",
        "ERROR Task terminus.cron.reaper[3] raised",
    ]
