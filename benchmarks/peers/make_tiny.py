"""A tiny Conv model (Conv-Relu-Conv-Relu-GlobalAveragePool-Gemm, random weights) to try the peer scripts on.

    /work/venvs/ptq-peers/bin/python benchmarks/peers/make_tiny.py /tmp/tiny   # any venv with onnx + onnxruntime

Writes DIR/tiny.onnx, DIR/calib.npy (100 x 1 x 12 x 12 Gaussian inputs), DIR/val_x.npy and DIR/val_y.npy
(500 others, labelled with the FP32 model's own top-1, so FP32 scores 1.0; the Gemm bias is set to
minus the mean logit so that every class occurs).
"""

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
r = np.random.default_rng(0)
weights = {"w1": r.normal(0, .3, (8, 1, 3, 3)), "b1": r.normal(0, .1, 8), "w2": r.normal(0, .3, (16, 8, 3, 3)),
           "b2": r.normal(0, .1, 16), "w3": r.normal(0, .5, (10, 16)), "b3": np.zeros(10)}
nodes = [h.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1] * 4),
         h.make_node("Relu", ["c1"], ["r1"], name="relu1"),
         h.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1] * 4),
         h.make_node("Relu", ["c2"], ["r2"], name="relu2"),
         h.make_node("GlobalAveragePool", ["r2"], ["p"], name="pool"), h.make_node("Flatten", ["p"], ["f"], name="flat"),
         h.make_node("Gemm", ["f", "w3", "b3"], ["logits"], name="fc", transB=1)]
x = r.normal(0, 1, (600, 1, 12, 12)).astype(np.float32)


def build() -> onnx.ModelProto:
    g = h.make_graph(nodes, "tiny", [h.make_tensor_value_info("x", T.FLOAT, ["batch", 1, 12, 12])],
                     [h.make_tensor_value_info("logits", T.FLOAT, ["batch", 10])],
                     [nh.from_array(v.astype(np.float32), k) for k, v in weights.items()])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def logits(m: onnx.ModelProto) -> np.ndarray:
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


weights["b3"] = -logits(build()).mean(0)
model = build()
onnx.save(model, str(out / "tiny.onnx"))
y = logits(model).argmax(1)
np.save(out / "calib.npy", x[:100])
np.save(out / "val_x.npy", x[100:])
np.save(out / "val_y.npy", y[100:])
print(out / "tiny.onnx", "classes", np.bincount(y, minlength=10).tolist())
