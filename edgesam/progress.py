"""Progress bars: one tqdm style for every command (training steps, cached images, annotation, export)."""
from __future__ import annotations

import sys


def progress_bar(**kwargs):
    """A tqdm bar on stderr; refreshes at most every 5 s when stderr is not a terminal (log files).

    ``kwargs`` go to ``tqdm`` (``desc``, ``total``, ``unit``, ``initial``, ``disable``...).
    """
    from tqdm import tqdm

    interactive = sys.stderr.isatty()
    return tqdm(mininterval=0.5 if interactive else 5.0, dynamic_ncols=interactive, file=sys.stderr, **kwargs)
