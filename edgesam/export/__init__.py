"""Export: ONNX graphs (``onnx_export``) and TensorRT engines (``tensorrt_build``, imports TensorRT lazily).

CLI: ``python -m edgesam.export --checkpoint CKPT|--random --img-size 1024 --out DIR``
[``--flavor native|edgesam|sam``] [``--encoder-input float|uint8``]: client contracts in ``flavors``.
"""
from .onnx_export import (DECODER_FILE, DECODER_INPUTS, DECODER_OUTPUTS, ENCODER_FILE, META_FILE, export_all,
                          export_decoder, export_encoder)

__all__ = ["DECODER_FILE", "DECODER_INPUTS", "DECODER_OUTPUTS", "ENCODER_FILE", "META_FILE", "export_all",
           "export_decoder", "export_encoder"]
