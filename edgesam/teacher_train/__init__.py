"""Training a small SAM teacher on synthetic scenes with exact GT masks (SAM's recipe, issue 14).

``scenes`` makes batches, ``prompts`` samples box/point prompts and corrective clicks, ``losses`` holds
focal + dice (20:1) with the IoU-head MSE, ``loop`` runs training and held-out evaluation.
"""
