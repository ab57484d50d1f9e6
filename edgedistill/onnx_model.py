"""A user's own ONNX classifier, compressed and measured without a recipe: ``evaluate_onnx`` (the metric of
each file through ONNX Runtime) and ``quantize_onnx`` (the pipeline's INT8 PTQ, with the accuracy-aware
fallback when a largest drop is given). The commands ``edgedistill evaluate`` and ``quantize`` call them.

The data is split as a recipe's ``[data]`` would be: calibration samples come from the training part, the
fallback is judged on the validation part, and the FP32 and INT8 metrics are reported on the test part;
data without labels only calibrates.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from . import _io
from .onnx_inspect import check_onnx
from .data.core import SampleSet, Splits, Subset
from .errors import ConfigError, DataError, EdgeDistillError


def model_io(path: str | os.PathLike) -> tuple[tuple, int | None]:
    """``(input shape without the batch axis, number of output scores or None)`` of a checked ONNX file."""
    model = check_onnx(path)
    if model is None:
        raise DataError(f"{path}: an .ort file cannot be quantized or inspected here; pass the .onnx it came from.")
    g = model.graph
    inits = {i.name for i in g.initializer}
    inputs = [i for i in g.input if i.name not in inits]
    if len(inputs) != 1:
        raise DataError(f"{path}: has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); these commands take "
                        "a classifier with one input (text models go through a recipe's task).")

    def dims(v) -> list:
        return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in v.type.tensor_type.shape.dim]

    out = dims(g.output[0])
    return tuple(dims(inputs[0])[1:]), (out[-1] if out and isinstance(out[-1], int) and out[-1] > 0 else None)


def load_splits(spec: str, model: str | os.PathLike, seed: int = 0) -> tuple[Splits, str]:
    """The splits ``--data`` names for ``model`` (checked against its input and outputs), and how they are read."""
    from .data import load_data
    from .data.spec import data_config

    io = model_io(model)
    cfg, how = data_config(spec, io[0])
    splits = load_data(cfg, seed)
    check_fits(model, splits, spec, io)
    if not any(labelled(p) for p in (splits.train, splits.val, splits.test)):
        how += " (no labels: calibration only)"
    return splits, how


def check_fits(model: str | os.PathLike, splits: Splits, spec: str, io: tuple | None = None) -> None:
    """``model`` takes the samples of ``splits`` and has a score for each of their labels (else one sentence);
    ``io``: its :func:`model_io`, when already read."""
    input_shape, n_out = io or model_io(model)
    want = tuple(splits.input_shape)
    if len(input_shape) != len(want) or any(isinstance(d, int) and d != s for d, s in zip(input_shape, want)):
        raise DataError(f"{model}: expects input of shape {list(input_shape)} (after the batch axis), but {spec} has "
                        f"samples of shape {list(want)}; pass data of the model's input shape.")
    top = max((int(p.y.max()) for p in (splits.train, splits.val, splits.test) if len(p)), default=-1)
    if n_out is not None and top >= n_out:
        raise DataError(f"{spec}: has label {top}, but {model} outputs {n_out} scores (labels 0..{n_out - 1}); "
                        "pass labels that index the model's outputs.")


def whole(splits: Splits) -> SampleSet:
    """Every sample of data that came as one set and was split by fractions; else the test split."""
    parts = (splits.train, splits.val, splits.test)
    if all(isinstance(p, Subset) for p in parts) and len({id(p.base) for p in parts}) == 1:
        base = splits.train.base
        return base.subset(np.arange(len(base)))
    return splits.test


def labelled(split: SampleSet) -> bool:
    return bool(len(split.y)) and bool((split.y >= 0).any())


def _entry(path, split: SampleSet | None) -> dict:
    from .tasks import get_task

    metric = get_task("classification").metric(path, split) if split is not None and labelled(split) else None
    return {"path": str(path), "size_mb": _io.file_size_mb(path), "metric": metric}


def evaluate_onnx(models: list[str], spec: str, seed: int = 0) -> dict:
    """The accuracy of each ONNX file on the data ``spec`` names (every labelled sample of one set; the test
    split of data that has its own), through ONNX Runtime, a batch at a time."""
    if not models:
        raise ConfigError("evaluate: name at least one .onnx file.")
    splits, how = load_splits(spec, models[0], seed)
    split = whole(splits)
    if not labelled(split):
        raise DataError(f"{spec}: has no labels, so there is nothing to measure; add y (integer labels) beside x.")
    for m in models[1:]:
        check_fits(m, splits, spec)  # every model must take this data (read once)
    return {"data": how, "split": "all" if split is not splits.test else "test",
            "samples": int((split.y >= 0).sum()), "models": [_entry(m, split) for m in models]}


def quantize_onnx(model: str | os.PathLike, spec: str, out: str | os.PathLike, method: str = "mse",
                  samples: int = 256, max_drop: float | None = None, seed: int = 0) -> dict:
    """INT8 static PTQ (QDQ, S8S8 per channel) of ``model`` calibrated on ``spec``'s data, written to ``out``
    only when it succeeds (and, with ``max_drop``, meets it on the validation split)."""
    from .quant.calibration import calibration_sample
    from .quant.ptq import quantize_int8
    from .recipe import PTQConfig
    from ._schema import from_dict
    from .tasks import get_task

    model, out = Path(model), Path(out)
    if out.resolve() == model.resolve():
        raise ConfigError(f"--out: {out} is the input model; write the INT8 model to another file.")
    cfg = from_dict(PTQConfig, {"calibration": method, "samples": samples, "max_drop": max_drop}, "quantize")
    splits, how = load_splits(str(spec), model, seed)
    has_labels = labelled(splits.test)
    if max_drop is not None and not has_labels:
        raise ConfigError(f"--max-drop: {spec} has no labels to measure a drop with; add y beside x or leave --max-drop out.")
    calib = calibration_sample(splits.train if has_labels else whole(splits), samples, seed)
    judge, judged_on = (splits.val, "val") if labelled(splits.val) else (splits.test, "test")
    task = get_task("classification")
    partial = out.with_name(f".{out.name}.partial")
    try:
        meta = quantize_int8(model, partial, calib, cfg, mode="static",
                             evaluate=(lambda p: task.metric(p, judge)["value"]) if max_drop is not None else None)
        fb = meta["fallback"]
        if fb is not None and not fb["met"]:
            best = min(fb["steps"], key=lambda s: s["drop_points"])
            raise EdgeDistillError(
                f"{model}: INT8 loses {best['drop_points']:.2f} accuracy points on the {judged_on} split even with "
                f"{len(best['quantizers_removed'])} activation quantizer(s) removed, more than --max-drop {max_drop:g}; allow a "
                "larger drop, raise the limit in a recipe's ptq.max_fallback_nodes, or try --method minmax.")
        os.replace(partial, out)
    finally:
        if partial.exists():
            partial.unlink()
    test = splits.test if has_labels else None
    fp32, int8 = _entry(model, test), _entry(out, test)
    drop = round((fp32["metric"]["value"] - int8["metric"]["value"]) * 100, 4) if has_labels else None
    return {"fp32": fp32, "int8": int8, "drop_points": drop, "kept_fp32": meta["nodes_excluded"], "method": method,
            "calibration_samples": meta["calibration_samples"], "data": how,
            "splits": {"calibration": "train" if has_labels else "all (no labels)", "fallback": judged_on if max_drop is not None else None,
                       "metric": "test" if has_labels else None, "test_samples": int(len(splits.test)) if has_labels else 0},
            "fallback": meta["fallback"]}
