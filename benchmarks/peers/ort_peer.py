"""ONNX Runtime's own static INT8 with all its defaults, as a peer of edgedistill's PTQ.

    python benchmarks/peers/ort_peer.py --fp32 model.onnx --calib calib.npy --out ort_default.onnx

``quant_pre_process(fp32, pre)`` then ``quantize_static(pre, out, reader)`` with every other argument
left at ORT's default: QDQ format, QInt8 activations (ORT 1.32), QInt8 weights, per_channel=False,
reduce_range=False, MinMax calibration. The reader feeds the calibration samples one at a time (batch 1).
Imports only numpy and onnxruntime, so it runs in the project venv and in the peer venv alike.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np


def ort_default(fp32: str | os.PathLike, out: str | os.PathLike, calib: np.ndarray) -> None:
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, quant_pre_process, quantize_static

    input_name = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(calib)

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {input_name: np.ascontiguousarray(x[None], np.float32)}

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre))
        quantize_static(str(pre), str(out), Reader())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fp32", required=True)
    ap.add_argument("--calib", required=True, help=".npy, N x input shape (float32)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    ort_default(args.fp32, args.out, np.load(args.calib))
    print(args.out)


if __name__ == "__main__":
    main()
