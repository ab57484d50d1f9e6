"""The mobile bundle: everything an Android / iOS / board app needs to ship one model, for ONNX Runtime, LiteRT or
both.

``write_bundle`` writes, into one folder (built beside it and renamed into place, so a crash
never leaves a half bundle):

- ``model.onnx`` with the key facts also in its ``metadata_props`` (``edgedistill.*`` keys);
- ``model.ort`` (ORT format, ``onnxruntime.tools.convert_onnx_models_to_ort``) and
  ``required_operators.config`` for a reduced-operator ONNX Runtime build; the ``.ort`` file is
  checked to give the same outputs as the ``.onnx`` on random inputs before the bundle is kept;
- any ``extra_files`` (tokenizer files for text models), copied as they are;
- ``model.tflite`` when a LiteRT model is bundled (chosen, or beside the ONNX one for a target with
  ``runtime = "both"``), with its inputs and outputs in ``metadata.json["litert"]``: shapes, the NCHW layout, and
  the scale and zero point of int8 inputs and outputs an app quantizes / dequantizes with;
- ``MODEL_CARD.md``; and ``metadata.json`` with inputs/outputs, preprocessing, labels, opset,
  onnxruntime version, ORT mobile usability (NNAPI / CoreML partitions), ``runtime`` (the chosen model's) and the
  sha256 of every other file in the folder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path

from . import _io
from .ort_session import METADATA_KEY, config_text, required_config, session_options
from .errors import ConfigError, DataError, StageError
from .litert import runtime_of, tflite_facts
from .onnx_inspect import inspect_model

METADATA_KEYS = ("name", "description", "task", "labels", "preprocessing", "metric", "teacher", "target",
                 "precision", "execution_provider")
MODEL_CARD_KEYS = ("name", "description", "metric", "size_mb", "latency_ms", "peak_rss_mb", "threads", "machine",
                   "teacher", "target", "dataset", "precision", "intended_use", "limitations")
_PROP_PREFIX = "edgedistill."
_COREML_QDQ_WARNING = ("the model is QDQ-quantized and the CoreML execution provider does not run "
                       "QuantizeLinear/DequantizeLinear: on iOS those parts fall back to the CPU, splitting the "
                       "graph; ship the FP32 model for CoreML or run the INT8 model on the CPU provider.")


def write_bundle(model_path, out_dir, *, metadata: dict, model_card: dict, extra_files: list[str] = (),
                 execution_provider: str | None = None, target_platform: str | None = None, also: list[str] = ()) -> dict:
    """Write the mobile bundle for ``model_path`` (``.onnx`` or ``.tflite``) into ``out_dir``; return what was written.

    ``also``: at most one more model for the other runtime (a target with ``runtime = "both"`` ships both files).
    ``metadata`` keys: one of METADATA_KEYS (``labels`` a list, ``preprocessing`` and ``metric`` tables).
    ``model_card`` keys: MODEL_CARD_KEYS (measured figures and the machine they came from).
    ``execution_provider`` (default ``metadata["execution_provider"]``) is the provider the app will
    use; a QDQ model aimed at CoreMLExecutionProvider gets a warning. ``target_platform`` "arm" or
    "amd64" is passed to the ORT converter (default: neither, a portable ``.ort``).
    """
    import onnxruntime as ort

    _check_keys(metadata, METADATA_KEYS, "metadata")
    _check_keys(model_card, MODEL_CARD_KEYS, "model_card")
    sources = [Path(model_path), *map(Path, also)]
    for src in sources:
        if not src.is_file():
            raise DataError(f"{src}: model file not found; check the path.")
    by_runtime = {runtime_of(p): p for p in sources}
    if len(by_runtime) != len(sources):
        raise DataError(f"also: {', '.join(map(str, also))} is for the same runtime as {model_path}; a bundle holds "
                        "one model per runtime.")
    runtime = runtime_of(sources[0])
    extras = [Path(p) for p in extra_files]
    for p in extras:
        if not p.is_file():
            raise DataError(f"{p}: extra file for the bundle not found; check the path.")
    names = [p.name for p in extras]
    clash = {"model.onnx", "model.ort", "model.tflite", "required_operators.config", "metadata.json",
             "MODEL_CARD.md"} & set(names)
    if clash or len(set(names)) != len(names):
        raise DataError(f"extra_files: {sorted(clash) or names} would collide with another bundle file; rename it.")
    src = by_runtime.get("onnxruntime")
    info = inspect_model(str(src)) if src else None
    if info and info["size_mb"] * 1e6 > 2e9:
        raise DataError(f"{src}: over 2 GB, too big for a single-file mobile bundle; shrink the model first.")
    ep = execution_provider or metadata.get("execution_provider") or "CPUExecutionProvider"

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        litert = _write_tflite(by_runtime["litert"], work) if "litert" in by_runtime else None
        facts = _key_facts(metadata, info or litert, ort.__version__ if info else None)
        config = required_config(info["metadata_props"]) if info else {}  # what an INT8 file asks for (ort_session)
        if config:
            facts["ort_session_config"] = config
        usability, warnings, parity = None, [], None
        if info:
            _write_onnx_with_props(src, work / "model.onnx", facts)
            _convert_to_ort(work, target_platform)
            parity = _ort_parity(work / "model.onnx", work / "model.ort")
            usability = mobile_usability(work / "model.onnx")
            warnings = _warnings(info, ep, usability)
        for p in extras:
            shutil.copyfile(p, work / p.name)
        bundled = {**info, "size_mb": round(_io.file_size_mb(work / "model.onnx"), 6)} if info else None
        card = render_model_card(model_card, info=bundled, facts=facts, usability=usability, warnings=warnings,
                                 ort_size_mb=_io.file_size_mb(work / "model.ort") if info else None, litert=litert,
                                 runtime=runtime)
        _io.write_text(work / "MODEL_CARD.md", card)
        files = {p.name: {"sha256": _io.sha256_file(p), "bytes": p.stat().st_size} for p in sorted(work.iterdir())}
        meta = {**facts, "runtime": runtime, "extra_files": names, "warnings": warnings, "files": files,
                "files_note": "sha256 of every file in the bundle except metadata.json itself"}
        if info:
            meta.update(execution_provider=ep, usability=usability, ort_parity=parity)
        if litert:
            meta["litert"] = litert
        _io.write_json(work / "metadata.json", meta)
        _io.make_readable(work)
        if out.exists():
            shutil.rmtree(out)
        work.rename(out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return {"out_dir": str(out), "files": {n: f["sha256"] for n, f in files.items()}, "usability": usability,
            "warnings": warnings, "ort_parity": parity, "runtime": runtime}


def _write_tflite(src: Path, work: Path) -> dict:
    """Copy the LiteRT model as ``model.tflite``; what an app reads to feed it (layout, int8 I/O parameters)."""
    from importlib.metadata import PackageNotFoundError, version

    shutil.copyfile(src, work / "model.tflite")
    facts = {"path": str(src), **tflite_facts(work / "model.tflite")}
    try:
        facts["ai_edge_litert"] = version("ai-edge-litert")
    except PackageNotFoundError:  # pragma: no cover - tflite_facts needs it
        facts["ai_edge_litert"] = None
    image = len(facts["inputs"]) == 1 and len(facts["inputs"][0]["shape"]) == 4
    facts.update(file="model.tflite", size_mb=round(facts["size_mb"], 6), input_layout="NCHW" if image else None,
                 batch=facts["inputs"][0]["shape"][0] if facts["inputs"] and facts["inputs"][0]["shape"] else None,
                 int8_io_note=("an int8 input is fed as round(x / scale) + zero_point (clamped to int8), an int8 output "
                               "read as scale * (q - zero_point)") if facts["format"] == "int8" else None)
    return facts


def _check_keys(d: dict, allowed: tuple, what: str) -> None:
    if not isinstance(d, dict):
        raise ConfigError(f"{what}: expected a dict, got {type(d).__name__}; pass a dict with keys from {', '.join(allowed)}.")
    for k in d:
        if k not in allowed:
            raise ConfigError(f"{what}.{k}: unknown key; valid keys are: {', '.join(allowed)}.")


def _key_facts(metadata: dict, info: dict, ort_version: str | None) -> dict:
    """The facts both metadata.json and the ONNX file's props carry; ``info``: the ONNX model's
    :func:`inspect_model`, or with a LiteRT model alone :func:`_write_tflite`'s facts (no opset, params or MACs)."""
    return {
        "name": metadata.get("name", Path(info["path"]).stem),
        "description": metadata.get("description", ""),
        "task": metadata.get("task", ""),
        "inputs": info["inputs"],
        "outputs": info["outputs"],
        "preprocessing": metadata.get("preprocessing", {}),
        "labels": list(metadata.get("labels", [])),
        "metric": metadata.get("metric"),
        "teacher": metadata.get("teacher"),
        "target": metadata.get("target"),
        "precision": metadata.get("precision", "int8" if info["format"] != "float" else "fp32"),
        "opset": info.get("opset"),
        "onnxruntime": ort_version,
        "params": info.get("params"),
        "macs": info.get("macs"),
    }


def _write_onnx_with_props(src: Path, dst: Path, facts: dict) -> None:
    import onnx

    model = onnx.load(str(src))
    props = {p.key: p.value for p in model.metadata_props if not p.key.startswith(_PROP_PREFIX)}
    for k, v in facts.items():
        if v in (None, "", [], {}):
            continue
        props[_PROP_PREFIX + k] = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    del model.metadata_props[:]
    for k, v in props.items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(dst))


def _convert_to_ort(work: Path, target_platform: str | None) -> None:
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    conv = work / ".ort_conversion"
    quiet = logging.getLogger("ort_format_model.utils")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(sys.stderr):  # the converter prints progress; stdout is for results
            convert_onnx_models_to_ort(work / "model.onnx", output_dir=conv,
                                       optimization_styles=[OptimizationStyle.Fixed], target_platform=target_platform)
    except Exception as e:
        raise StageError(f"ORT-format conversion of model.onnx failed ({str(e).splitlines()[0][:200]}); "
                         "check that onnxruntime can load the model.") from None
    finally:
        quiet.setLevel(level)
    (conv / "model.ort").rename(work / "model.ort")
    config = (conv / "model.required_operators.config").read_text()
    lines = [ln for ln in config.splitlines() if not ln.startswith("# -")]  # drop the temp path it names
    _io.write_text(work / "required_operators.config", "\n".join(lines).replace(
        "# Generated from model/s:", "# Generated from model.ort by onnxruntime.tools.convert_onnx_models_to_ort") + "\n")
    shutil.rmtree(conv)


def _ort_parity(onnx_path: Path, ort_path: Path) -> dict:
    """Run the .onnx and the .ort on the same random inputs; the outputs must agree. The .onnx runs twice: in ONNX
    Runtime's default session and with ORT's optimizations off (the graph's own arithmetic); the .ort must match
    either. An INT8 .ort converted for another platform (``target_platform="arm"``) computes the graph's arithmetic,
    which the default session of an x86 host without VNNI does not (its U8S8 kernels saturate 16-bit pair sums); an
    ORT-format model ignores :data:`~edgedistill.ort_session.PRECISE_INT8` (measured: its outputs do not change)."""
    import numpy as np
    import onnxruntime as ort

    from .bench import random_inputs
    from .verify import model_session

    b = ort.InferenceSession(str(ort_path), session_options(), providers=["CPUExecutionProvider"])
    refs = [model_session(onnx_path, precise_int8=False), model_session(onnx_path, graph_arithmetic=True)]
    feeds = random_inputs(refs[0], batch_size=2, seq_len=16, seed=1)
    got = b.run(None, feeds)
    diffs = []
    for ref in refs:
        worst = 0.0
        for x, y in zip(ref.run(None, feeds), got):
            x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
            if x.shape != y.shape:
                raise StageError(f"{ort_path.name} gives output shape {y.shape}, {onnx_path.name} {x.shape}; "
                                 "the ORT conversion is broken, report it.")
            scale = max(float(np.abs(x).max(initial=0.0)), 1.0)
            worst = max(worst, float(np.abs(x - y).max(initial=0.0)) / scale)
        diffs.append(worst)
    worst = min(diffs)
    ok = worst <= 1e-4
    if not ok:
        raise StageError(f"{ort_path.name} differs from {onnx_path.name} by {worst:.2e} (relative); "
                         "the ORT conversion changed the model, report it.")
    return {"max_rel_diff": worst, "ok": ok, "batch_size": 2, "matches": "host" if diffs[0] <= 1e-4 else "graph"}


def mobile_usability(onnx_path) -> dict:
    """ORT's mobile usability check per provider (NNAPI, CoreML NeuralNetwork, CoreML MLProgram):
    node coverage, partitions, unsupported ops and ORT's verdict (YES / MAYBE / NO)."""
    import onnx
    from onnxruntime.tools.mobile_helpers import usability_checker as uc
    from onnxruntime.tools.onnx_model_utils import optimize_model

    checks = {
        "nnapi": uc.check_nnapi_partitions,
        "coreml_neuralnetwork": lambda m, fixed: uc.check_coreml_partitions(m, fixed, "coreml_supported_neuralnetwork_ops.md"),
        "coreml_mlprogram": lambda m, fixed: uc.check_coreml_partitions(m, fixed, "coreml_supported_mlprogram_ops.md"),
    }
    with tempfile.TemporaryDirectory() as tmp:
        opt = Path(tmp) / "basic.onnx"
        optimize_model(Path(onnx_path), opt)  # ORT's own check looks at the BASIC-optimised graph too
        model = onnx.shape_inference.infer_shapes(onnx.load(str(opt)), strict_mode=False)
    _, dynamic_values = uc.check_shapes(model.graph)
    out = {"dynamic_shape_values": dynamic_values}
    for name, fn in checks.items():
        fixed = fn(model, True)
        entry = _partition_dict(fixed)
        if entry["suitability"] != "YES" and dynamic_values:
            entry["suitability_if_shapes_fixed"] = fn(model, False).suitability().name
        out[name] = entry
    return out


def _partition_dict(p) -> dict:
    return {"nodes": p.num_nodes, "supported_nodes": p.num_supported_nodes, "partitions": p.num_partitions,
            "unsupported_ops": sorted(p.unsupported_ops), "suitability": p.suitability().name}


def _warnings(info: dict, ep: str, usability: dict) -> list[str]:
    warnings = []
    qdq = info["op_histogram"].get("QuantizeLinear", 0) + info["op_histogram"].get("DequantizeLinear", 0)
    if qdq:
        for key in ("coreml_neuralnetwork", "coreml_mlprogram"):
            usability[key]["warning"] = _COREML_QDQ_WARNING
        if ep == "CoreMLExecutionProvider":
            warnings.append(_COREML_QDQ_WARNING)
    if ep == "NnapiExecutionProvider" and usability["nnapi"]["suitability"] == "NO":
        warnings.append("ORT's usability check expects NNAPI to run little of this model; benchmark it against "
                        "the CPU provider on the phone before choosing NNAPI.")
    return warnings


def render_model_card(card: dict, *, info: dict | None, facts: dict, usability: dict | None, warnings: list[str],
                      ort_size_mb: float | None, litert: dict | None = None, runtime: str = "onnxruntime") -> str:
    """MODEL_CARD.md: what the model is, its measured figures and where they were measured. ``info`` (the ONNX model)
    and ``litert`` (the LiteRT model): whichever the bundle holds; ``runtime`` says which one the figures are for."""
    name = card.get("name") or facts["name"]
    lines = [f"# {name}", ""]
    if card.get("description") or facts.get("description"):
        lines += [card.get("description") or facts["description"], ""]
    chosen = {"onnxruntime": "model.onnx (ONNX Runtime)", "litert": "model.tflite (LiteRT)"}[runtime]
    lines += [f"The measured figures are those of {chosen}.", "", "## Measured", "", "| quantity | value |", "|---|---|"]
    metric = card.get("metric") or facts.get("metric")
    if metric:
        lines.append(f"| {metric.get('name', 'metric')} | {_fmt(metric.get('value'))} |")
    if info:
        onnx_mb = card.get("size_mb", info["size_mb"]) if runtime == "onnxruntime" else info["size_mb"]
        lines.append(f"| size, model.onnx | {_fmt(onnx_mb)} MB |")
        lines.append(f"| size, model.ort | {_fmt(ort_size_mb)} MB |")
    if litert:
        lines.append(f"| size, model.tflite | {_fmt(litert['size_mb'])} MB |")
    for k, v in (card.get("latency_ms") or {}).items():
        lines.append(f"| latency {k} | {_fmt(v)} ms |")
    if card.get("peak_rss_mb") is not None:
        lines.append(f"| peak RSS | {_fmt(card['peak_rss_mb'])} MB |")
    if info:
        lines += [f"| parameters | {info['params']:,} |", f"| MACs per sample | {info['macs']:,} |",
                  f"| precision | {card.get('precision') or facts['precision']} ({info['format']}, "
                  f"{info['quantized_share']:.0%} of compute ops quantized) |"]
    else:
        lines.append(f"| precision | {card.get('precision') or facts['precision']} ({litert['format']}) |")
    lines.append("")
    machine = card.get("machine")
    if machine:
        if isinstance(machine, dict):
            isa = ", ".join(k for k, v in (machine.get("isa") or {}).items() if v) or "none recorded"
            machine = (f"{machine.get('cpu', '?')}, {machine.get('cores', '?')} cores, ISA: {isa}, "
                       f"onnxruntime {machine.get('onnxruntime', '?')}")
        threads = f", {card['threads']} thread(s)" if card.get("threads") else ""
        lines += [f"Latency and memory were measured on: {machine}{threads}.", ""]
    lines += ["## Provenance", ""]
    for label, key in (("Teacher", "teacher"), ("Target", "target"), ("Data", "dataset")):
        value = card.get(key) or facts.get(key)
        if value:
            lines.append(f"- {label}: {value if isinstance(value, str) else json.dumps(value)}")
    if info:
        lines.append(f"- Opset: {json.dumps(facts['opset'])}; converted with onnxruntime {facts['onnxruntime']}")
    if litert:
        lines.append(f"- model.tflite: converted with litert-torch; runs with ai-edge-litert {litert.get('ai_edge_litert')}")
    lines.append("")
    if info:
        lines += ["## Inputs and outputs (model.onnx)", "", "| | name | shape | dtype |", "|---|---|---|---|"]
        lines += [f"| {kind} | {v['name']} | {v['shape']} | {v['dtype']} |"
                  for kind, vs in (("input", info["inputs"]), ("output", info["outputs"])) for v in vs]
        lines.append("")
    if litert:
        lines += _tflite_io_lines(litert)
    if facts.get("ort_session_config"):
        lines += _session_lines(facts["ort_session_config"])
    if facts.get("preprocessing"):
        lines += ["## Preprocessing", "", "```json", json.dumps(facts["preprocessing"], indent=2), "```", ""]
    if facts.get("labels"):
        lines += [f"Labels ({len(facts['labels'])}): " + ", ".join(map(str, facts["labels"][:50]))
                  + (" ..." if len(facts["labels"]) > 50 else ""), ""]
    if usability:
        lines += ["## ORT mobile usability", "",
                  "| provider | supported nodes | partitions | verdict | verdict with fixed input shapes |",
                  "|---|---|---|---|---|"]
        for ep in ("nnapi", "coreml_neuralnetwork", "coreml_mlprogram"):
            u = usability[ep]
            lines.append(f"| {ep} | {u['supported_nodes']}/{u['nodes']} | {u['partitions']} | {u['suitability']} "
                         f"| {u.get('suitability_if_shapes_fixed', u['suitability'])} |")
    for label, key in (("Intended use", "intended_use"), ("Limitations", "limitations")):
        if card.get(key):
            lines += ["", f"## {label}", "", card[key]]
    if warnings:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in warnings]
    return "\n".join(lines).rstrip() + "\n"


def _session_lines(entries: dict) -> list[str]:
    """The model card's section on the ONNX Runtime session config an INT8 file asks for (edgedistill.ort_session)."""
    calls = " / ".join(f'`add_session_config_entry("{k}", "{v}")`' for k, v in entries.items())
    return ["## ONNX Runtime session", "", f"On an x86 CPU without VNNI, open model.onnx with the session config "
            f"{config_text(entries)} (Python {calls}; C/C++ `AddSessionConfigEntry`, Java and Kotlin "
            "`addConfigEntry`): there ONNX Runtime's default INT8 kernels sum 8-bit products in saturating 16-bit "
            "pairs and did not compute this file's arithmetic when it was quantized; with this entry they do, more "
            "slowly. On Arm and on x86 with VNNI it changes nothing, and model.ort (for Arm phones) ignores it. The "
            f"ONNX file records it in its metadata ({METADATA_KEY}).", ""]


def _tflite_io_lines(litert: dict) -> list[str]:
    """The model card's table of the .tflite file's inputs and outputs, with the int8 tensors' scale and zero point."""
    lines = ["## Inputs and outputs (model.tflite)", "",
             f"Batch {litert['batch']}" + (f", layout {litert['input_layout']}" if litert.get("input_layout") else "")
             + (f"; {litert['int8_io_note']}." if litert.get("int8_io_note") else "."), "",
             "| | name | shape | dtype | scale | zero point |", "|---|---|---|---|---|---|"]
    for kind, tensors in (("input", litert["inputs"]), ("output", litert["outputs"])):
        for v in tensors:
            q = v.get("quantization") or {}
            lines.append(f"| {kind} | {v['name']} | {v['shape']} | {v['dtype']} | {_fmt(q['scale']) if q else ''} | "
                         f"{q.get('zero_point', '')} |")
    return lines + [""]


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
