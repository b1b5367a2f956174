"""``python -m edgesam.export``: see :func:`edgesam.export.export_cli.main` (``--flavor`` / ``--encoder-input``:
:mod:`edgesam.export.flavors`). Importing this module (the ``edgesam export`` entry point) runs nothing."""
import sys

from .export_cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
