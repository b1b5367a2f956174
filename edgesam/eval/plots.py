"""PNG figures for a distillation run: training curves and a prediction/reference overlay grid.

Uses matplotlib's object API with the Agg canvas (no pyplot, no global backend switch, no display).
"""
from __future__ import annotations

import io
import math
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

_NOT_CURVES = {"step", "epoch", "global_step", "loss", "lr", "kind", "num_prompts"}


def _ema(values: np.ndarray) -> np.ndarray:
    """Exponential moving average whose window (~1/alpha) is about a tenth of the curve."""
    alpha = min(1.0, max(0.02, 10.0 / max(len(values), 1)))
    out = np.empty_like(values)
    acc = values[0]
    for i, v in enumerate(values):
        acc = v if i == 0 else (1 - alpha) * acc + alpha * v
        out[i] = acc
    return out


def _save(fig: Figure, path: str | Path) -> Path | str:
    """PNG to a local path (a Path comes back) or an s3:// / gs:// URI (the URI comes back)."""
    from .. import storage

    FigureCanvasAgg(fig)
    if storage.is_uri(path):
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return storage.write_bytes(path, buf.getvalue())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def plot_curves(history: Sequence[dict], path: str | Path, title: str | None = None) -> Path:
    """Loss / lr / loss-part / eval curves from per-step records -> PNG at ``path``.

    Records are dicts like ``{"step", "loss", "lr", "kind"?, "bce"?, ..., "eval/box"?}``; the x axis is the
    record index (steps of consecutive distillation stages follow each other), coloured by ``kind``.
    """
    numeric = defaultdict(list)  # key -> [(x, value)]
    kinds: list[str] = []
    for x, rec in enumerate(history):
        kinds.append(str(rec.get("kind", "train")))
        for key, value in rec.items():
            if isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool) \
                    and math.isfinite(float(value)):
                numeric[key].append((x, float(value)))
    parts = sorted(k for k in numeric if k not in _NOT_CURVES and not k.startswith("eval/"))
    evals = sorted(k for k in numeric if k.startswith("eval/") and not k.startswith("eval/ignored")
                   and not k.startswith("eval/num_"))
    panels = [p for p, has in (("loss", "loss" in numeric), ("lr", "lr" in numeric), ("parts", bool(parts)),
                               ("eval", bool(evals))) if has]
    fig = Figure(figsize=(7, 2.6 * max(1, len(panels))), dpi=90)
    if not panels:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no training history", ha="center", va="center")
        ax.set_axis_off()
    for i, panel in enumerate(panels):
        ax = fig.add_subplot(len(panels), 1, i + 1)
        if panel == "loss":
            pts = numeric["loss"]
            for kind in dict.fromkeys(kinds):
                sel = np.array([(x, v) for x, v in pts if kinds[x] == kind])
                if len(sel):
                    (line,) = ax.plot(sel[:, 0], _ema(sel[:, 1]), lw=1.5, label=f"{kind} (EMA)")
                    ax.plot(sel[:, 0], sel[:, 1], alpha=0.3, lw=0.8, color=line.get_color())
            ax.set_ylabel("loss")
            if all(v > 0 for _, v in pts):
                ax.set_yscale("log")
        elif panel == "lr":
            sel = np.array(numeric["lr"])
            ax.plot(sel[:, 0], sel[:, 1], lw=1.2, color="black")
            ax.set_ylabel("lr")
            if (sel[:, 1] > 0).all():
                ax.set_yscale("log")
        elif panel == "parts":
            for key in parts:
                sel = np.array(numeric[key])
                ax.plot(sel[:, 0], _ema(sel[:, 1]), lw=1.2, label=key)
            ax.set_ylabel("loss parts (EMA)")
        else:
            for key in evals:
                sel = np.array(numeric[key])
                ax.plot(sel[:, 0], sel[:, 1], marker="o", lw=1.0, label=key[len("eval/"):])
            ax.set_ylabel("held-out mIoU")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
    if panels:
        fig.axes[-1].set_xlabel("training step (all stages)")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _as_rgb(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"images must be HxWx3 (or HxW), got shape {img.shape}")
    if img.dtype != np.uint8:
        img = np.clip(img if img.max() > 1.0 else img * 255.0, 0, 255).astype(np.uint8)
    return img.astype(np.float32) / 255.0


def _overlay(rgb: np.ndarray, mask: np.ndarray, colour: tuple[float, float, float], alpha: float = 0.5) -> np.ndarray:
    out = rgb.copy()
    out[mask] = (1 - alpha) * out[mask] + alpha * np.asarray(colour, np.float32)
    return out


def mask_grid(images: Sequence[np.ndarray], masks_pred: Sequence[np.ndarray], masks_ref: Sequence[np.ndarray],
              path: str | Path, max_items: int = 8, titles: Sequence[str] | None = None,
              pred_label: str = "prediction", ref_label: str = "reference") -> Path:
    """One row per item: prediction overlay (blue), reference overlay (green), disagreement (red = FP,
    yellow = FN), with the IoU in the title. images HxWx3 (uint8 or float); masks (H,W) bool each."""
    n = len(images)
    if len(masks_pred) != n or len(masks_ref) != n or (titles is not None and len(titles) != n):
        raise ValueError(f"{n} images but {len(masks_pred)} predictions, {len(masks_ref)} references"
                         + (f", {len(titles)} titles" if titles is not None else ""))
    if max_items < 1:
        raise ValueError(f"max_items must be >= 1, got {max_items}")
    rows = min(n, max_items)
    fig = Figure(figsize=(9, 3 * max(rows, 1)), dpi=80)
    if rows == 0:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no items", ha="center", va="center")
        ax.set_axis_off()
    for r in range(rows):
        rgb = _as_rgb(images[r])
        pred, ref = np.asarray(masks_pred[r], bool), np.asarray(masks_ref[r], bool)
        if pred.shape != rgb.shape[:2] or ref.shape != rgb.shape[:2]:
            raise ValueError(f"item {r}: masks {pred.shape}, {ref.shape} do not match image {rgb.shape[:2]}")
        union = (pred | ref).sum()
        iou = (pred & ref).sum() / union if union else float("nan")
        diff = _overlay(_overlay(rgb, pred & ~ref, (1.0, 0.1, 0.1), 0.7), ref & ~pred, (1.0, 0.9, 0.1), 0.7)
        panels = ((_overlay(rgb, pred, (0.1, 0.4, 1.0)), pred_label), (_overlay(rgb, ref, (0.1, 0.9, 0.2)), ref_label),
                  (diff, f"IoU {iou * 100:.1f}" if union else "IoU n/a (both empty)"))
        for c, (img, label) in enumerate(panels):
            ax = fig.add_subplot(rows, 3, r * 3 + c + 1)
            ax.imshow(img)
            prefix = f"{titles[r]}: " if titles is not None and c == 0 else ""
            ax.set_title(prefix + label, fontsize=8)
            ax.set_axis_off()
    fig.tight_layout()
    return _save(fig, path)
