"""The pipeline: ``stage.py`` says what a stage is (a leaf), ``stages.py`` registers the built-in ones in run
order, ``runner.py`` runs them (order, manifest, skip-if-unchanged, ``--from``, resume, the run lock)."""

from __future__ import annotations

from .runner import RunLock, input_files, run, stage_names

__all__ = ["RunLock", "input_files", "run", "stage_names"]
