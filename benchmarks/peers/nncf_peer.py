"""NNCF 3.4 (default and with accuracy control) and ONNX Runtime's defaults on one FP32 ONNX file.

    /work/venvs/ptq-peers/bin/python benchmarks/peers/nncf_peer.py --fp32 model.onnx --calib calib.npy \
        --val-x val_x.npy --val-y val_y.npy --max-drop 0.5 --out-dir DIR [--skip-ac] [--ac-max-iterations N]

Runs in the peer venv (``benchmarks/peers/setup_venv.sh``); imports only numpy, onnx, onnxruntime and
nncf, never edgedistill. Writes to DIR:

- ``nncf_default.onnx``: ``nncf.quantize(model, nncf.Dataset(calib))`` with NNCF's defaults
  (``subset_size`` = the number of calibration samples, fed one at a time as batch-1 arrays);
- ``nncf_ac.onnx``: ``nncf.quantize_with_accuracy_control(model, calib, val, validation_fn,
  max_drop=POINTS/100, drop_type=ABSOLUTE)``, ``validation_fn`` = top-1 accuracy with ONNX Runtime
  on val_x/val_y. In NNCF 3.4's ONNX backend ``validation_fn(model: onnx.ModelProto, items)`` gets
  the untransformed items (here (x, y) pairs) and returns (metric, per-item metrics); NNCF calls it
  with single items when ranking quantizers, so the per-item list keeps it in "metric mode";
- ``ort_default.onnx``: ONNX Runtime's ``quantize_static`` with all defaults (``ort_peer.py``);
- ``nncf.json``: versions, seconds per method, validation accuracy of every model, how each graph
  is quantized (QuantizeLinear count, per-channel weights, dtypes, zero points, bias changes) and
  what accuracy control left in FP32 compared to ``nncf_default.onnx`` (from the two graphs), with
  NNCF's own log lines about it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ort_peer import ort_default  # noqa: E402


def session(model: onnx.ModelProto | str) -> ort.InferenceSession:
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(src, providers=["CPUExecutionProvider"])


def correct(sess: ort.InferenceSession, x: np.ndarray, y: np.ndarray, batch: int = 64) -> np.ndarray:
    """1.0 / 0.0 per sample: is the top-1 class the label."""
    name = sess.get_inputs()[0].name
    out = [sess.run(None, {name: np.ascontiguousarray(x[i:i + batch], np.float32)})[0].argmax(1)
           for i in range(0, len(x), batch)]
    return (np.concatenate(out) == y).astype(np.float64)


def validation_fn(model: onnx.ModelProto, items) -> tuple[float, list[float]]:
    """NNCF's signature: (model, iterable of (x with batch dim 1, y)) -> (accuracy, per-item accuracies)."""
    items = list(items)
    x = np.concatenate([i[0] for i in items])
    y = np.array([i[1] for i in items])
    hits = correct(session(model), x, y)
    return float(hits.mean()), hits.tolist()


def qdq_summary(model: onnx.ModelProto, fp32: onnx.ModelProto) -> dict:
    """How a QDQ graph quantizes, one row per DequantizeLinear: the tensor (a QuantizeLinear's input, or a
    weight stored already quantized), per-channel or not, dtype, "symmetric" = zero point 0; int32 biases
    (ORT) only counted; and which Conv/Gemm biases differ from FP32 (NNCF's bias correction)."""
    g = model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    inits.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in g.node
                  if n.op_type == "Constant" and n.attribute and n.attribute[0].type == onnx.AttributeProto.TENSOR})
    fp32_inits = {t.name: numpy_helper.to_array(t) for t in fp32.graph.initializer}
    q_in = {n.output[0]: n.input[0] for n in g.node if n.op_type == "QuantizeLinear"}
    weights, acts, biases32 = [], [], 0
    for n in g.node:
        if n.op_type != "DequantizeLinear":
            continue
        tensor = q_in.get(n.input[0], n.input[0])
        scale, zp = inits.get(n.input[1]), inits.get(n.input[2]) if len(n.input) > 2 else None
        row = {"tensor": tensor, "per_channel": bool(scale is not None and scale.size > 1),
               "dtype": str(zp.dtype) if zp is not None else "uint8", "symmetric": bool(zp is None or not np.any(zp)),
               "consumers": [m.name for m in g.node if n.output[0] in m.input]}
        if row["dtype"] == "int32":  # ORT's quantized biases
            biases32 += 1
            continue
        (weights if tensor in inits else acts).append(row)
    biases = {}
    for n in g.node:
        if n.op_type in ("Conv", "Gemm") and len(n.input) > 2 and n.input[2] in fp32_inits and n.input[2] in inits:
            a, b = fp32_inits[n.input[2]], inits[n.input[2]]
            if a.shape == b.shape and np.max(np.abs(a - b)) > 0:
                biases[n.name] = round(float(np.max(np.abs(a - b)) / (np.max(np.abs(a)) + 1e-12)), 5)
    count = lambda rows, key: sum(r[key] for r in rows)  # noqa: E731
    return {"dequantize_linear": len(weights) + len(acts) + biases32, "quantize_linear": len(q_in),
            "int32_biases": biases32, "weights": len(weights),
            "activations": len(acts), "weights_per_channel": count(weights, "per_channel"),
            "weights_symmetric": count(weights, "symmetric"), "weight_dtypes": sorted({r["dtype"] for r in weights}),
            "activations_symmetric": count(acts, "symmetric"), "activation_dtypes": sorted({r["dtype"] for r in acts}),
            "bias_max_rel_change_vs_fp32": biases, "rows": weights + acts}


def reverted(sd: dict, sa: dict) -> dict:
    """What is dequantized in the default graph (summary ``sd``) but not in the AC graph (``sa``)."""
    key = lambda s: {(r["tensor"], c) for r in s["rows"] for c in r["consumers"]}  # noqa: E731
    lost, added = key(sd) - key(sa), key(sa) - key(sd)
    return {"quantize_linear_default": sd["quantize_linear"], "quantize_linear_ac": sa["quantize_linear"],
            "dequantize_linear_default": sd["dequantize_linear"], "dequantize_linear_ac": sa["dequantize_linear"],
            "tensors_without_qdq": sorted({t for t, _ in lost}), "nodes_fed_fp32": sorted({c for _, c in lost}),
            "qdq_only_in_ac": sorted(f"{t} -> {c}" for t, c in added)}


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fp32", required=True)
    ap.add_argument("--calib", required=True, help=".npy, N x input shape, float32")
    ap.add_argument("--val-x", required=True)
    ap.add_argument("--val-y", required=True)
    ap.add_argument("--max-drop", type=float, default=0.5, help="accuracy points (absolute) accuracy control may lose")
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--skip-ac", action="store_true", help="only the default quantizations")
    ap.add_argument("--ac-max-iterations", type=int, default=None,
                    help="cap on accuracy control's revert iterations (NNCF's default: none; on EfficientNet-Lite0 "
                         "each takes ~25 s on 2 cores)")
    args = ap.parse_args()
    import nncf

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fp32 = onnx.load(args.fp32)
    name = fp32.graph.input[0].name
    calib, val_x, val_y = np.load(args.calib), np.load(args.val_x), np.load(args.val_y)
    calib_ds = nncf.Dataset([{name: c[None].astype(np.float32)} for c in calib])
    val_ds = nncf.Dataset(list(zip(val_x[:, None].astype(np.float32), val_y)), lambda item: {name: item[0]})
    log = _Lines()
    logging.getLogger("nncf").addHandler(log)
    result = {"nncf": nncf.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__,
              "fp32": str(args.fp32), "calibration_samples": len(calib), "validation_samples": len(val_x),
              "max_drop_points": args.max_drop, "seconds": {}, "val_accuracy": {}, "graphs": {}}

    def done(key: str, path: Path, t0: float) -> None:
        result["seconds"][key] = round(time.perf_counter() - t0, 2)
        result["val_accuracy"][key] = float(correct(session(str(path)), val_x, val_y).mean())
        result["graphs"][key] = qdq_summary(onnx.load(str(path)), fp32)
        print(f"{key}: val accuracy {result['val_accuracy'][key]:.4f} in {result['seconds'][key]} s", file=sys.stderr)

    result["val_accuracy"]["fp32"] = float(correct(session(args.fp32), val_x, val_y).mean())
    t0 = time.perf_counter()
    onnx.save(nncf.quantize(fp32, calib_ds, subset_size=len(calib)), str(out / "nncf_default.onnx"))
    done("nncf_default", out / "nncf_default.onnx", t0)
    t0 = time.perf_counter()
    ort_default(args.fp32, out / "ort_default.onnx", calib)
    done("ort_default", out / "ort_default.onnx", t0)
    if not args.skip_ac:
        log.lines.clear()
        t0 = time.perf_counter()
        from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

        restorer = AdvancedAccuracyRestorerParameters()
        if args.ac_max_iterations is not None:
            restorer.max_num_iterations = args.ac_max_iterations
        ac = nncf.quantize_with_accuracy_control(fp32, calib_ds, val_ds, validation_fn, max_drop=args.max_drop / 100,
                                                 drop_type=nncf.DropType.ABSOLUTE, subset_size=len(calib),
                                                 advanced_accuracy_restorer_parameters=restorer)
        onnx.save(ac, str(out / "nncf_ac.onnx"))
        done("nncf_ac", out / "nncf_ac.onnx", t0)
        result["ac_reverted"] = reverted(result["graphs"]["nncf_default"], result["graphs"]["nncf_ac"])
        result["ac_reverted"]["nncf_log"] = [s for s in log.lines if any(
            k in s.lower() for k in ("drop", "revert", "algorithm completed", "quantized operations", "could not", "iteration"))]
    for g in result["graphs"].values():
        g["rows"] = [f"{r['tensor']}: {'per-channel' if r['per_channel'] else 'per-tensor'} {r['dtype']} "
                     f"{'symmetric' if r['symmetric'] else 'asymmetric'}" for r in g["rows"]]
    (out / "nncf.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("nncf", "seconds", "val_accuracy")}, indent=1))


if __name__ == "__main__":
    main()
