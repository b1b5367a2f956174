"""Framework-free distillation library: losses, prompt sampling, step functions and the lr schedule."""
from .losses import bce_dice_loss, decoder_valid_mask, embedding_valid_mask, masked_embedding_mse
from .prompts import (append_points, centre_click, make_prompt_batch, pick_tokens, sample_error_points,
                      sample_gt_prompts, sample_refinement_points)
from .schedule import cosine_with_warmup, lr_at
from .steps import encoder_kd_step, freeze_for_prompt_kd, prompt_kd_step

__all__ = ["append_points", "bce_dice_loss", "centre_click", "cosine_with_warmup", "decoder_valid_mask",
           "embedding_valid_mask", "encoder_kd_step", "freeze_for_prompt_kd", "lr_at", "make_prompt_batch",
           "masked_embedding_mse", "pick_tokens", "prompt_kd_step", "sample_error_points", "sample_gt_prompts",
           "sample_refinement_points"]
