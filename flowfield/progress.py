"""Progress bars for long jobs (fit, evaluation) that do not flood logs.

On a terminal the bar redraws in place; when stderr is a file or a pipe (CI, `kubectl logs`,
a job scheduler) it writes a line at most every 30 seconds instead of one per update.
"""

from __future__ import annotations

import sys

from tqdm import tqdm


def progress_bar(total: int, desc: str, unit: str = "it", enabled: bool = True, initial: int = 0):
    """A tqdm bar over `total` units; a disabled bar when enabled is False."""
    tty = sys.stderr.isatty()
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit=unit,
        disable=not enabled,
        mininterval=0.1 if tty else 30.0,
        dynamic_ncols=tty,
    )
