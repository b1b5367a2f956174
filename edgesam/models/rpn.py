"""Class-agnostic region proposal network (RPN) on the frozen student encoder (distillation step 3).

The public names, in one place; each part lives in a module with one job:

- :mod:`.rpn_head`: the FCOS-style head (``RPN``, ``build_rpn``); the design notes are there.
- :mod:`.rpn_loss`: FCOS assignment (``fcos_targets``), the loss (``rpn_loss``) and ``train_rpn_step``.
- :mod:`.rpn_postprocess`: threshold + NMS (``select_proposals``) and the deploy graph ``EncoderWithRPN``
  (``rpn.onnx``; the export itself is :mod:`edgesam.export.rpn_onnx`).
"""
from __future__ import annotations

from .rpn_head import LEVEL_KEYS, RPN, build_rpn
from .rpn_loss import fcos_targets, rpn_loss, train_rpn_step
from .rpn_postprocess import RPN_ONNX_FILE, RPN_ONNX_INPUTS, RPN_ONNX_OUTPUTS, EncoderWithRPN, select_proposals

__all__ = ["LEVEL_KEYS", "RPN", "RPN_ONNX_FILE", "RPN_ONNX_INPUTS", "RPN_ONNX_OUTPUTS", "EncoderWithRPN", "build_rpn",
           "fcos_targets", "rpn_loss", "select_proposals", "train_rpn_step"]
