"""Student checkpoints: official EdgeSAM files (``edge_sam.pth``, ``edge_sam_3x.pth``) and our own.

Official files are a plain state dict (or ``{"model": state_dict}``) whose keys match
``EdgeSAM.state_dict()`` one to one, so they load with ``strict=True`` and no key map. Our own
checkpoints are ``{"model": state_dict, "rpn": state_dict | None, "meta": {...}}``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from .. import storage
from .edgesam import EdgeSAM


def _unwrap(obj: Any) -> tuple[Mapping[str, torch.Tensor], dict]:
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        return obj["model"], {k: v for k, v in obj.items() if k != "model"}
    if isinstance(obj, Mapping):
        return obj, {}
    raise ValueError(f"checkpoint holds a {type(obj).__name__}, expected a state dict")


def load_state_dict_strict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str = "checkpoint") -> None:
    """``load_state_dict(strict=True)`` with one clear error naming every bad key and shape."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append("shape mismatch for " + "; ".join(wrong[:10]))
        if missing:
            parts.append(f"missing keys ({len(missing)}): " + ", ".join(missing[:10]))
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): " + ", ".join(unexpected[:10]))
        raise ValueError(f"{what} does not match the model: " + " | ".join(parts))
    model.load_state_dict(state, strict=True)


def load_student(path: str | Path, img_size: int = 1024, map_location: str = "cpu") -> tuple[EdgeSAM, dict]:
    """Load an official EdgeSAM checkpoint or one of ours into a fresh student.

    Returns ``(model, extras)``; ``extras`` holds our checkpoint's other entries (``rpn``, ``meta``).
    The RPN, when present, is attached as ``model.rpn``.
    """
    if not storage.is_file(path):  # local, s3:// or gs://
        raise FileNotFoundError(f"student checkpoint not found: {path}")
    obj = storage.torch_load(path, map_location=map_location, weights_only=True)
    state, extras = _unwrap(obj)
    model = EdgeSAM(img_size)
    load_state_dict_strict(model, {k: v for k, v in state.items() if not k.startswith("rpn.")}, what=str(path))
    if extras.get("rpn") is not None:
        from .rpn import build_rpn  # local import: the RPN is optional

        rpn_cfg = (extras.get("meta") or {}).get("rpn_config", {})
        model.rpn = build_rpn(model.image_encoder.feature_channels, **rpn_cfg)
        load_state_dict_strict(model.rpn, extras["rpn"], what=f"{path} (rpn)")
    return model.eval(), extras


def core_state_dict(model: EdgeSAM) -> dict[str, torch.Tensor]:
    """The official-format part of the state dict (no ``rpn.*`` keys; the RPN is stored on its own)."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith("rpn.")}


def save_student(model: EdgeSAM, path: str | Path, meta: dict | None = None) -> Path | str:
    """Write ``{"model", "rpn", "meta"}``; the ``model`` entry alone is an official-format state dict.

    ``path`` may be an s3:// / gs:// URI (returned as given); the write is atomic either way.
    """
    meta = dict(meta or {})
    if model.rpn is not None and "rpn_config" not in meta and hasattr(model.rpn, "build_config"):
        meta["rpn_config"] = model.rpn.build_config  # the head's shape: load_student rebuilds it from this
    obj = {"model": core_state_dict(model), "rpn": model.rpn.state_dict() if model.rpn is not None else None, "meta": meta}
    storage.torch_save(obj, path)
    return path if storage.is_uri(path) else Path(path)
