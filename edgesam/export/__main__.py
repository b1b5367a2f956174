"""``python -m edgesam.export``: see :func:`edgesam.export.onnx_export.main`."""
import sys

from .onnx_export import main

sys.exit(main())
