"""Progress bars for the job's long stages: live on a terminal, a line now and then in a log.

tqdm redraws a bar many times a second; in a CI log (no terminal) every redraw is another line,
thousands for one generation. Off a terminal a bar is written at most every ``LOG_INTERVAL_S``.
"""

from __future__ import annotations

import sys
from typing import Any

LOG_INTERVAL_S = 30.0


def progress_bar(total: int | None, desc: str, enabled: bool = True, initial: int = 0, unit: str = "it") -> Any:
    """A tqdm bar on stderr, or None when not ``enabled``."""
    if not enabled:
        return None
    from tqdm import tqdm

    on_terminal = sys.stderr.isatty()
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True,
                mininterval=0.1 if on_terminal else LOG_INTERVAL_S)
