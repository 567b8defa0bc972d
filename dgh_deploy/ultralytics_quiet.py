"""Calling into Ultralytics without its console output reaching the user's terminal."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

ULTRALYTICS_LOGGER = "ultralytics"


def _drop(record: logging.LogRecord) -> bool:
    return False


@contextlib.contextmanager
def quiet_ultralytics() -> Iterator[None]:
    """Ultralytics' log lines (settings banner, dataset notes) are dropped inside the block, unless
    dgh_deploy's debug logging is on (``--verbose``).

    Ultralytics logs through its own stdout handler and resets its logger's level when first
    imported, so a level set beforehand would not hold; a filter on the logger holds across that
    import and is removed on exit.
    """
    if logging.getLogger("dgh_deploy").isEnabledFor(logging.DEBUG):
        yield
        return
    logger = logging.getLogger(ULTRALYTICS_LOGGER)
    logger.addFilter(_drop)
    try:
        yield
    finally:
        logger.removeFilter(_drop)
