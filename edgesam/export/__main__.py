"""``python -m edgesam.export``: see :func:`edgesam.export.onnx_export.main` (``--flavor`` / ``--encoder-input``:
:mod:`edgesam.export.flavors`). Importing this module (the ``edgesam export`` entry point) runs nothing."""
import sys

from .onnx_export import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
