"""How edgedistill opens ONNX Runtime sessions, and the session config an INT8 file asks for.

On an x86 CPU without VNNI, ONNX Runtime's U8S8 kernels multiply-add with VPMADDUBSW, whose 16-bit pair sums
saturate (ONNX Runtime's quantization docs), so a default session there does not compute an INT8 file's own
arithmetic. The session config entry :data:`PRECISE_INT8` makes it run weights outside [-64, 63] as U8U8 instead:
exact, and slower. Elsewhere (VNNI, Arm dot-product) and for FP32 files it changes nothing.

edgedistill measures metrics with it (the file's integer arithmetic, what every target that computes INT8 exactly
gets). The PTQ stage and the QAT export measure whether ONNX Runtime's default session on this host changes the
file's results against it (:func:`default_session_differs`); where it does, they write the entries the file needs
into its metadata (:data:`METADATA_KEY`), the benchmark times the file in that session, the report warns, and the
bundle's model card tells the app to set them.
"""

from __future__ import annotations

import json
import os

PRECISE_INT8 = {"session.x64quantprecision": "1"}  # onnxruntime_session_options_config_keys.h
METADATA_KEY = "edgedistill.ort_session_config"  # a JSON object of session config entries, in metadata_props
MIN_AGREEMENT = 0.99  # top-1 agreement of the default session with the precise one below which a file needs the latter


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


def default_session_differs(kernels: dict | None) -> bool:
    """Whether ONNX Runtime's default session changed an INT8 file's top-1 against the precise one on more than
    1 - :data:`MIN_AGREEMENT` of the samples (``kernels``: :func:`edgedistill.quant.ptq.kernels_vs_graph`'s record;
    a host that computes INT8 exactly measures no default session, and nothing differs)."""
    default = (kernels or {}).get("default_session")
    return bool(default) and default["top1_agreement_with_precise"] < MIN_AGREEMENT


def required_config(model) -> dict:
    """The session config entries an ONNX ``model`` asks for in its metadata; {} if none. ``model``: a path, a
    ModelProto, or its metadata as a mapping (:func:`edgedistill.onnx_inspect.inspect_model`'s ``metadata_props``)."""
    if isinstance(model, (str, os.PathLike)):
        import onnx

        model = onnx.load(str(model), load_external_data=False)
    props = model if isinstance(model, dict) else {p.key: p.value for p in model.metadata_props}
    value = props.get(METADATA_KEY)
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
