"""Evaluation: the interactive mIoU protocol and PNG figures."""
from .miou import (EvalSample, ProtocolTrace, evaluate_model, full_res_masks, gt_prompts_and_lowres, instance_ious,
                   run_protocol, select_mask, stage_name)
from .plots import mask_grid, plot_curves

__all__ = ["EvalSample", "ProtocolTrace", "evaluate_model", "full_res_masks", "gt_prompts_and_lowres",
           "instance_ious", "mask_grid", "plot_curves", "run_protocol", "select_mask", "stage_name"]
