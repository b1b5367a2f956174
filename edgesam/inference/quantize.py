"""INT8 copies of the exported graphs for ONNX Runtime on CPU (``NAME.int8.onnx`` beside ``NAME.onnx``).

What is quantised, and why (measured in ``benchmarks/decoder_fast.py``; BENCHMARKS.md, section int8):

- **Encoder / RPN backbone:** only the RepViT channel mixers (the 1x1 convs ``m.0`` and ``m.2`` of each block,
  almost all of the MACs), static QDQ: int8 weights per output channel, uint8 activations with MinMax ranges
  from calibration photos. The depthwise token mixers, SE gates, stem, downsampling convs, neck and RPN head
  stay fp32: they are a small share of the MACs and the most sensitive to per-tensor activation ranges.
- **SmoothQuant on ``m.0``:** its input is the residual stream, whose channels differ in range by orders of
  magnitude; one per-tensor uint8 scale crushes the small channels (1.8 % embedding error, mask IoU vs fp32
  0.975). Each input channel c is divided by ``s_c = a_c^alpha / w_c^(1 - alpha)`` (``a_c``: calibration
  abs-max of the activation, ``w_c``: abs-max of the weights reading it) in an fp32 ``Mul``, and the weights are
  multiplied by ``s_c``: the fp32 graph computes the same function (relative difference ~1e-7) and the
  quantised one has 0.4 % embedding error.
- **Prompt decoder** (``decoder_prompt.onnx``): only the output upscaling (``/up1/``, ``/up2/``: the per-pixel
  linear maps over all 4h x 4w positions, the quantisable share of the per-prompt MACs), dynamic quantisation
  (activation ranges per call). The token-side projections and MLPs are a fixed ~15 MMAC per prompt; the
  prompt positional encoding (``coords @ gaussian``) must stay fp32: quantising its input flips mask pixels
  wholesale (IoU 0.75). ``decoder_image.onnx`` runs once per image and stays fp32; so does ``decoder.onnx``,
  which serves mask prompts only.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

INT8_SUFFIX = ".int8.onnx"
SMOOTH_ALPHA = 0.5
STATIC_GRAPHS = ("encoder.onnx", "rpn.onnx")
PROMPT_GRAPH = "decoder_prompt.onnx"
UPSCALE_SCOPES = ("/up1/", "/up2/")  # module names in edgesam.export.decoder_fast.PromptSide
CHANNEL_MIXER = "/channel_mixer/m/"
MIXER_IN = "/channel_mixer/m/m.0/"


def int8_name(name: str) -> str:
    """``decoder_prompt.onnx`` -> ``decoder_prompt.int8.onnx``."""
    return name[: -len(".onnx")] + INT8_SUFFIX if name.endswith(".onnx") else name + INT8_SUFFIX


def calibration_photos() -> list[np.ndarray]:
    """uint8 (H,W,3) RGB photos bundled with scikit-image, none of those the accuracy benchmark scores."""
    import skimage.data as d

    return [d.rocket(), d.immunohistochemistry(), d.stereo_motorcycle()[0]]


class _Feeds:
    """``CalibrationDataReader`` over preprocessed images for a graph whose one input is (1,3,S,S)."""

    def __init__(self, input_name: str, img_size: int, images: Iterable[np.ndarray]) -> None:
        from ..data.transforms import preprocess

        self.items = [{input_name: preprocess(im, img_size)[0].numpy()} for im in images]

    def get_next(self):
        return self.items.pop() if self.items else None


def channel_absmax(model, tensors: Sequence[str], feeds: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Abs-max per channel (axis 1) of the named fp32 tensors of ``model`` (an ``onnx.ModelProto``) over ``feeds``."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for t in tensors:
        probe.graph.output.append(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    out = {t: np.zeros(0, np.float32) for t in tensors}
    for f in feeds:
        for t, v in zip(tensors, sess.run(list(tensors), f)):
            m = np.abs(v).max(axis=tuple(i for i in range(v.ndim) if i != 1))
            out[t] = m if out[t].size == 0 else np.maximum(out[t], m)
    return out


def smooth_conv_inputs(model, convs: Sequence[str], absmax: dict[str, np.ndarray], alpha: float = SMOOTH_ALPHA):
    """SmoothQuant for 1x1 convs (in place on ``model``): input channel c of each named Conv is divided by
    ``s_c`` in a new fp32 Mul and the Conv's weights (O,C,1,1) are multiplied by it; same function in fp32.
    ``absmax`` maps each Conv's input tensor to its per-channel calibration abs-max (C,)."""
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    wanted, nodes = set(convs), []
    for n in g.node:
        if n.name in wanted:
            w = numpy_helper.to_array(inits[n.input[1]])
            a = np.maximum(absmax[n.input[0]], 1e-5)
            s = (a ** alpha / np.maximum(np.abs(w).max(axis=(0, 2, 3)), 1e-5) ** (1 - alpha)).astype(np.float32)
            inits[n.input[1]].CopyFrom(numpy_helper.from_array((w * s[None, :, None, None]).astype(np.float32),
                                                               n.input[1]))
            scale, smoothed = n.name + "/smooth_scale", n.name + "/smoothed_input"
            g.initializer.append(numpy_helper.from_array((1 / s).reshape(1, -1, 1, 1).astype(np.float32), scale))
            nodes.append(helper.make_node("Mul", [n.input[0], scale], [smoothed], name=n.name + "/smooth"))
            n.input[0] = smoothed
        nodes.append(n)
    del g.node[:]
    g.node.extend(nodes)
    return model


def quantize_image_graph(src: Path, dst: Path, images: Sequence[np.ndarray] | None = None) -> Path:
    """encoder.onnx / rpn.onnx -> INT8 channel mixers (smoothed), static QDQ, calibrated on ``images``
    (default :func:`calibration_photos`)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre, smooth, tmp = (dst.with_name(dst.name + s) for s in (".pre.tmp", ".smooth.tmp", ".tmp"))
    try:
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        model = onnx.load(str(pre))
        inp = model.graph.input[0]
        size = int(inp.type.tensor_type.shape.dim[2].dim_value)
        if size < 1:
            raise ValueError(f"{src}: input {inp.name} needs a fixed (1,3,S,S) shape for calibration")
        convs = [n for n in model.graph.node if n.op_type == "Conv" and MIXER_IN in n.name]
        mixers = [n.name for n in model.graph.node if n.op_type == "Conv" and CHANNEL_MIXER in n.name]
        if not mixers:
            raise ValueError(f"{src} has no RepViT channel-mixer convs ({CHANNEL_MIXER}): not an EdgeSAM encoder graph")
        feeds = _Feeds(inp.name, size, images if images is not None else calibration_photos())
        absmax = channel_absmax(model, [n.input[0] for n in convs], list(feeds.items))  # a copy: feeds pops its own
        onnx.save(smooth_conv_inputs(model, [n.name for n in convs], absmax), str(smooth))
        quantize_static(str(smooth), str(tmp), feeds, nodes_to_quantize=mixers,
                        quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, op_types_to_quantize=["Conv"],
                        calibrate_method=CalibrationMethod.MinMax)
        tmp.replace(dst)
    finally:
        for p in (pre, smooth, tmp):
            p.unlink(missing_ok=True)
    return dst


def quantize_prompt_graph(src: Path, dst: Path) -> Path:
    """decoder_prompt.onnx -> INT8 output upscaling (dynamic quantisation), everything else fp32."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre, tmp = dst.with_name(dst.name + ".pre.tmp"), dst.with_name(dst.name + ".tmp")
    try:
        # folds the exporter's Identity-shared weights into initializers, which the quantiser needs
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        names = [n.name for n in onnx.load(str(pre)).graph.node
                 if n.op_type == "MatMul" and any(s in n.name for s in UPSCALE_SCOPES)]
        if len(names) != len(UPSCALE_SCOPES):
            raise ValueError(f"{src}: expected one MatMul in each of {UPSCALE_SCOPES}, found {names}; the graph "
                             "predates the named upscaling modules: export it again (edgesam export)")
        quantize_dynamic(str(pre), str(tmp), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul"], nodes_to_quantize=names)
        tmp.replace(dst)
    finally:
        pre.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
    return dst


def quantize_folder(onnx_dir: str | Path, names: Sequence[str], images: Sequence[np.ndarray] | None = None) -> list[Path]:
    """INT8 copies ``NAME.int8.onnx`` of the named graphs in ``onnx_dir`` (``encoder.onnx``, ``rpn.onnx``,
    ``decoder_prompt.onnx``); existing copies are kept. Concurrent callers (Serve replicas) queue on a lock
    file and the later ones find the copies. ``images``: calibration photos for the image graphs."""
    from ..export.trt_common import file_lock

    d = Path(onnx_dir)
    out = []
    for n in names:
        if n not in STATIC_GRAPHS and n != PROMPT_GRAPH:
            raise ValueError(f"no INT8 recipe for {n!r}: one of {STATIC_GRAPHS + (PROMPT_GRAPH,)}")
        dst = d / int8_name(n)
        with file_lock(d / int8_name(n)):
            if not dst.is_file():
                if n == PROMPT_GRAPH:
                    quantize_prompt_graph(d / n, dst)
                else:
                    quantize_image_graph(d / n, dst, images)
        out.append(dst)
    return out
