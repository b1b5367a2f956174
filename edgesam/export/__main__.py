"""``python -m edgesam.export``: see :func:`edgesam.export.onnx_export.main` (``--flavor`` / ``--encoder-input``:
:mod:`edgesam.export.flavors`)."""
import sys

from .onnx_export import main

sys.exit(main())
