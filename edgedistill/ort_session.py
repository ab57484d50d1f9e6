"""How edgedistill opens ONNX Runtime sessions, and the session config an INT8 file asks for.

On an x86 CPU without VNNI, ONNX Runtime's U8S8 kernels multiply-add with VPMADDUBSW, whose 16-bit pair sums
saturate (ONNX Runtime's quantization docs), so a default session there does not compute an INT8 file's own
arithmetic. The session config entry :data:`PRECISE_INT8` makes it run weights outside [-64, 63] as U8U8 instead:
exact, and slower. Elsewhere (VNNI, Arm dot-product) and for FP32 files it changes nothing.

edgedistill measures metrics with it (the file's arithmetic, what every target that computes INT8 exactly gets).
The PTQ stage measures whether ONNX Runtime's default session on this host keeps that arithmetic; where it does
not, it writes the entries the file needs into the file's metadata (:data:`METADATA_KEY`), the benchmark times the
file in that session, and the bundle's model card tells the app to set them.
"""

from __future__ import annotations

import json
import os

PRECISE_INT8 = {"session.x64quantprecision": "1"}  # onnxruntime_session_options_config_keys.h
METADATA_KEY = "edgedistill.ort_session_config"  # a JSON object of session config entries, in metadata_props
MIN_AGREEMENT = 0.99  # top-1 agreement of a session's INT8 kernels with the file's own arithmetic, below which it warns


def session_options(threads: int = 0, graph_arithmetic: bool = False, config: dict | None = None):
    """ONNX Runtime session options: ``threads`` (0: ORT's choice), ``graph_arithmetic`` (graph optimizations off, so
    a QDQ graph computes DequantizeLinear, the float op and QuantizeLinear instead of fused INT8 kernels) and the
    session config entries ``config`` (e.g. :data:`PRECISE_INT8`)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    if graph_arithmetic:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    for k, v in (config or {}).items():
        opts.add_session_config_entry(k, v)
    return opts


def required_config(model) -> dict:
    """The session config entries an ONNX ``model`` (a ModelProto, or a path) asks for in its metadata; {} if none."""
    if isinstance(model, (str, os.PathLike)):
        import onnx

        model = onnx.load(str(model), load_external_data=False)
    value = next((p.value for p in model.metadata_props if p.key == METADATA_KEY), None)
    return json.loads(value) if value else {}


def config_text(config: dict) -> str:
    """Session config entries as a user sets them: ``session.x64quantprecision = 1``."""
    return "; ".join(f"{k} = {v}" for k, v in config.items())


def set_required_config_(model, config: dict) -> None:
    """Record in ``model``'s metadata the session config entries it needs (replacing any earlier record)."""
    kept = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    if config:
        entry = model.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps(config, sort_keys=True)
