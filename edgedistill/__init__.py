"""edgedistill: teacher -> student -> distill -> export -> INT8 -> verify -> bench -> report.

The public verbs are imported lazily so that ``import edgedistill`` (and ``edgedistill.bench`` on a
board) never imports torch.
"""

from __future__ import annotations

__version__ = "0.1.0"

_EXPORTS = {
    "run": "edgedistill.pipeline",
    "load_recipe": "edgedistill.recipe",
    "load_target": "edgedistill.targets",
    "list_targets": "edgedistill.targets",
    "load_data": "edgedistill.data",
    "build_model": "edgedistill.models",
    "prepare_teacher": "edgedistill.teacher",
    "build_student": "edgedistill.student",
    "distill": "edgedistill.distill.stage",
    "export_onnx": "edgedistill.export",
    "quantize_int8": "edgedistill.quant.ptq",
    "verify": "edgedistill.verify",
    "benchmark": "edgedistill.bench",
    "inspect_model": "edgedistill.onnx_inspect",
    "write_bundle": "edgedistill.bundle",
    "plot_report": "edgedistill.plots",
    "write_report": "edgedistill.report",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'edgedistill' has no attribute {name!r}")
