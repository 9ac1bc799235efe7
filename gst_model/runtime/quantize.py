"""int8 copies of exported transformer graphs (dynamic quantization of the weights, onnxruntime's tool)."""
from __future__ import annotations

import os
from pathlib import Path


def quantized_graph(src: Path, out_dir: Path) -> Path:
    """<out_dir>/<src name>: src with int8 weights, made once (written under a temporary name, then renamed)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dst = out_dir / src.name
    if not dst.exists():
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = out_dir / f".{src.stem}.tmp.onnx"
        quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8, use_external_data_format=True)
        os.replace(tmp, dst)
    return dst
