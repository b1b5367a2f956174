"""TensorRT backends (TensorRT 10.x / 11.x Python API, torch CUDA tensors as I/O buffers).

``TrtEncoder`` / ``TrtDecoder`` take either an ``.engine`` file or an ``.onnx`` file (built and cached by
:func:`edgesam.export.tensorrt_build.build_engine`) and implement the numpy protocols of
:mod:`edgesam.inference.backends`. Inference binds each I/O tensor with ``set_tensor_address`` and runs
``execute_async_v3`` on the current torch CUDA stream (name-based tensor API only: none of it is among the
11.x removals). Engines are strongly typed and their I/O is float32 for both precisions (the FP16 graphs keep
float32 inputs and outputs); ``TrtEngine`` still reads each I/O tensor's type from the engine. ``TrtEncoder`` runs a whole batch of images per
execute when the engine has a dynamic batch axis (chunks of the profile's maximum, ``EncoderProfile.max_batch``),
and image by image for engines built from older fixed-batch-1 graphs.

``TrtRpnEncoder`` runs ``rpn.onnx`` (encoder + RPN head) as its own engine, so segment-everything under
``backend=tensorrt`` never falls back to ONNX Runtime on the CPU. ``TrtDecoder`` runs N prompts in
``execute_chunks(N, max_prompts)`` executes: one when the engine's profile was built with
``decoder_profile_for(max_proposals)``.

``import tensorrt`` is lazy: importing this module needs neither TensorRT nor a GPU; constructing a
backend without TensorRT raises ``RuntimeError`` with the install command.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..export.tensorrt_build import build_engine
from ..export.trt_common import DecoderProfile, EncoderProfile, execute_chunks, import_tensorrt, require_cuda


class TrtEngine:
    """A deserialized engine + one execution context. ``run`` takes and returns torch CUDA tensors."""

    def __init__(self, engine_path: str | Path, device: str | int = 0) -> None:
        trt = import_tensorrt()
        import torch

        self.device = require_cuda(device)
        self.path = Path(engine_path)
        if not self.path.is_file():
            raise FileNotFoundError(f"TensorRT engine not found: {self.path}")
        torch.cuda.set_device(self.device)
        self._trt = trt
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise RuntimeError(f"could not deserialize {self.path}: built for another GPU or TensorRT version? "
                               "Delete it to rebuild")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        to_torch = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32,
                    trt.int64: torch.int64, trt.bool: torch.bool}
        self.dtypes = {n: to_torch[self.engine.get_tensor_dtype(n)] for n in names}

    def shape(self, name: str) -> tuple[int, ...]:
        """Engine-level shape of an I/O tensor (-1 for dynamic axes)."""
        return tuple(self.engine.get_tensor_shape(name))

    def profile_max(self, name: str) -> tuple[int, ...]:
        """Largest shape the optimisation profile 0 accepts for input ``name``."""
        return tuple(self.engine.get_tensor_profile_shape(name, 0)[2])

    def run(self, feeds: dict) -> dict:
        """{input name: tensor} -> {output name: tensor on the engine's device}."""
        import torch

        keep = []  # hold the device copies until the stream has finished
        for name in self.inputs:
            t = feeds[name].to(self.device, self.dtypes[name]).contiguous()
            keep.append(t)
            if not self.context.set_input_shape(name, tuple(t.shape)):
                raise ValueError(f"{self.path.name}: input {name} shape {tuple(t.shape)} is outside the engine's profile")
            self.context.set_tensor_address(name, t.data_ptr())
        outs = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            outs[name] = torch.empty(shape, dtype=self.dtypes[name], device=self.device)
            self.context.set_tensor_address(name, outs[name].data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"TensorRT execution failed for {self.path.name}")
        stream.synchronize()
        return outs


def _engine_for(path: str | Path, precision: str, cache_dir: str | Path | None, device: str | int,
                profile: DecoderProfile | None = None, encoder_profile: EncoderProfile | None = None) -> Path:
    path = Path(path)
    if path.suffix == ".onnx":
        return build_engine(path, precision, cache_dir, profile or DecoderProfile(), device=device,
                            encoder_profile=encoder_profile or EncoderProfile())
    return path


class TrtEncoder:
    """EncoderBackend: (B,3,S,S) float32 -> (B,256,S/16,S/16) float32.

    ``max_batch`` is the largest batch one execute takes: the engine's fixed batch (1 for engines from older
    fixed-batch graphs) or the maximum of its optimisation profile. A batch is run in chunks of ``max_batch``
    images, one execute per chunk. ``profile`` applies when ``path`` is an ``.onnx`` file to build from.
    """

    def __init__(self, path: str | Path, precision: str = "fp16", device: str | int = 0,
                 cache_dir: str | Path | None = None, profile: EncoderProfile = EncoderProfile()) -> None:
        import_tensorrt()  # fail with the install hint before anything else
        self.engine = TrtEngine(_engine_for(path, precision, cache_dir, device, encoder_profile=profile), device)
        self.input_name = self.engine.inputs[0]
        shape = self.engine.shape(self.input_name)
        self.img_size = int(shape[-1])
        batch = int(shape[0])
        self.dynamic_batch = batch < 0
        self.max_batch = int(self.engine.profile_max(self.input_name)[0]) if self.dynamic_batch else batch
        self.name = f"tensorrt-{precision}" if Path(path).suffix == ".onnx" else "tensorrt"

    def __call__(self, images: np.ndarray) -> np.ndarray:
        import torch

        x = np.ascontiguousarray(images, dtype=np.float32)
        s = self.img_size
        if x.ndim != 4 or x.shape[1:] != (3, s, s) or x.shape[0] < 1:
            raise ValueError(f"images must have shape (B,3,{s},{s}), got {x.shape}")
        step = self.max_batch
        outs = [self.engine.run({self.input_name: torch.from_numpy(x[i:i + step])})["image_embeddings"].float().cpu()
                for i in range(0, x.shape[0], step)]
        return (outs[0] if len(outs) == 1 else torch.cat(outs)).numpy()


class TrtDecoder:
    """DecoderBackend over a decoder engine; N above the profile's maximum is split into chunks
    (:func:`execute_chunks`). ``profile`` applies when ``path`` is an ``.onnx`` file to build from."""

    def __init__(self, path: str | Path, precision: str = "fp16", device: str | int = 0,
                 cache_dir: str | Path | None = None, profile: DecoderProfile = DecoderProfile()) -> None:
        import_tensorrt()
        self.engine = TrtEngine(_engine_for(path, precision, cache_dir, device, profile), device)
        self.embedding_shape = self.engine.shape("image_embeddings")[1:]
        self.mask_hw = self.engine.shape("mask_input")[2:]
        self.img_size = 16 * int(self.embedding_shape[1])
        self.max_prompts = int(self.engine.profile_max("point_coords")[0])
        self.max_points = int(self.engine.profile_max("point_coords")[1])
        self.name = f"tensorrt-{precision}" if Path(path).suffix == ".onnx" else "tensorrt"

    def __call__(self, embedding: np.ndarray, point_coords: np.ndarray, point_labels: np.ndarray,
                 mask_input: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        import torch

        emb = np.ascontiguousarray(embedding, dtype=np.float32)
        coords = np.ascontiguousarray(point_coords, dtype=np.float32)
        labels = np.ascontiguousarray(point_labels, dtype=np.float32)
        if emb.ndim != 4 or tuple(emb.shape[1:]) != tuple(self.embedding_shape):
            raise ValueError(f"embedding must have shape (1,{','.join(map(str, self.embedding_shape))}), got {emb.shape}")
        if coords.ndim != 3 or coords.shape[-1] != 2 or min(coords.shape[:2]) < 1:
            raise ValueError(f"point_coords must have shape (N,P,2) with N, P >= 1, got {coords.shape}")
        if labels.shape != coords.shape[:2]:
            raise ValueError(f"point_labels must have shape {coords.shape[:2]}, got {labels.shape}")
        n, p = coords.shape[:2]
        if p > self.max_points:
            raise ValueError(f"{p} points per prompt exceed the engine's profile maximum of {self.max_points}")
        if emb.shape[0] not in (1, n):
            raise ValueError(f"embedding batch must be 1 or N={n}, got {emb.shape[0]}")
        if mask_input is not None:
            mask = np.ascontiguousarray(mask_input, dtype=np.float32)
            if mask.shape != (n, 1, *self.mask_hw):
                raise ValueError(f"mask_input must have shape ({n},1,{self.mask_hw[0]},{self.mask_hw[1]}), got {mask.shape}")
        else:
            mask = np.zeros((n, 1, *self.mask_hw), np.float32)
        has = np.full((n,), 0.0 if mask_input is None else 1.0, np.float32)
        per_prompt = emb.shape[0] != 1
        masks, scores = [], []
        emb_t = torch.from_numpy(emb)
        for sl in execute_chunks(n, 1 if per_prompt else self.max_prompts):
            out = self.engine.run({"image_embeddings": emb_t[sl] if per_prompt else emb_t,
                                   "point_coords": torch.from_numpy(coords[sl]),
                                   "point_labels": torch.from_numpy(labels[sl]),
                                   "mask_input": torch.from_numpy(mask[sl]),
                                   "has_mask_input": torch.from_numpy(has[sl])})
            masks.append(out["masks"].float().cpu())
            scores.append(out["scores"].float().cpu())
        return torch.cat(masks).numpy(), torch.cat(scores).numpy()


class TrtRpnEncoder:
    """``rpn.onnx`` as a TensorRT engine: (1,3,S,S) float32 -> (image_embeddings (1,256,S/16,S/16),
    rpn_boxes (1,L,4) XYXY S frame, rpn_scores (1,L)), float32 numpy, like ``OrtRpnEncoder``."""

    OUTPUTS = ("image_embeddings", "rpn_boxes", "rpn_scores")

    def __init__(self, path: str | Path, precision: str = "fp16", device: str | int = 0,
                 cache_dir: str | Path | None = None) -> None:
        import_tensorrt()
        self.engine = TrtEngine(_engine_for(path, precision, cache_dir, device), device)
        missing = [o for o in self.OUTPUTS if o not in self.engine.outputs]
        if missing:
            raise ValueError(f"{path} is not an EdgeSAM rpn graph: outputs {self.engine.outputs} lack {missing}")
        self.input_name = self.engine.inputs[0]
        self.img_size = int(self.engine.shape(self.input_name)[-1])
        self.name = f"tensorrt-{precision}" if Path(path).suffix == ".onnx" else "tensorrt"

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        import torch

        x = np.ascontiguousarray(images, dtype=np.float32)
        if x.shape != (1, 3, self.img_size, self.img_size):
            raise ValueError(f"images must have shape (1,3,{self.img_size},{self.img_size}), got {x.shape}")
        out = self.engine.run({self.input_name: torch.from_numpy(x)})
        return tuple(out[o].float().cpu().numpy() for o in self.OUTPUTS)  # type: ignore[return-value]
