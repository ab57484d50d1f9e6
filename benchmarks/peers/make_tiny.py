import numpy as np, onnx, onnxruntime as ort
from onnx import helper as h, numpy_helper as nh, TensorProto as T
r = np.random.default_rng(0)
inits = [nh.from_array(r.normal(0, .3, (8, 1, 3, 3)).astype(np.float32), "w1"), nh.from_array(r.normal(0, .1, 8).astype(np.float32), "b1"),
         nh.from_array(r.normal(0, .3, (16, 8, 3, 3)).astype(np.float32), "w2"), nh.from_array(r.normal(0, .1, 16).astype(np.float32), "b2"),
         nh.from_array(r.normal(0, .5, (10, 16)).astype(np.float32), "w3"), nh.from_array(np.zeros(10, np.float32), "b3")]
nodes = [h.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1]*4), h.make_node("Relu", ["c1"], ["r1"], name="relu1"),
         h.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1]*4), h.make_node("Relu", ["c2"], ["r2"], name="relu2"),
         h.make_node("GlobalAveragePool", ["r2"], ["p"], name="pool"), h.make_node("Flatten", ["p"], ["f"], name="flat"),
         h.make_node("Gemm", ["f", "w3", "b3"], ["logits"], name="fc", transB=1)]
g = h.make_graph(nodes, "tiny", [h.make_tensor_value_info("x", T.FLOAT, ["batch", 1, 12, 12])],
                 [h.make_tensor_value_info("logits", T.FLOAT, ["batch", 10])], inits)
m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)]); m.ir_version = 8
onnx.checker.check_model(m); onnx.save(m, "tiny.onnx")
x = r.normal(0, 1, (600, 1, 12, 12)).astype(np.float32)
l = ort.InferenceSession("tiny.onnx").run(None, {"x": x})[0]
m.graph.initializer[5].CopyFrom(nh.from_array(-l.mean(0).astype(np.float32), "b3")); onnx.save(m, "tiny.onnx")
y = ort.InferenceSession("tiny.onnx").run(None, {"x": x})[0].argmax(1)
np.save("calib.npy", x[:100]); np.save("val_x.npy", x[100:]); np.save("val_y.npy", y[100:])
print("classes", np.bincount(y, minlength=10))
