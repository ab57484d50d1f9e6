"""Calibration samples for static INT8: which training samples calibrate (``calibration_sample``), and the
ONNX Runtime reader that feeds them in small batches (``ArrayReader``), shared by PTQ and its fallback."""

from __future__ import annotations

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from ..data.core import SampleSet, as_samples

_CALIB_BATCH = 32


class ArrayReader(CalibrationDataReader):
    """A CalibrationDataReader over samples (a SampleSet or an array), read in small batches so memory
    stays bounded by the batch, not by the calibration set."""

    def __init__(self, input_name: str, x: SampleSet | np.ndarray, batch: int = _CALIB_BATCH) -> None:
        self.input_name, self.x, self.batch, self.i = input_name, as_samples(x), batch, 0

    def get_next(self):
        if self.i >= len(self.x):
            return None
        chunk = self.x.read(np.arange(self.i, min(self.i + self.batch, len(self.x))))
        self.i += self.batch
        return {self.input_name: chunk}

    def rewind(self) -> None:
        self.i = 0


def calibration_sample(split: SampleSet | np.ndarray, n: int, seed: int) -> SampleSet:
    """``n`` samples drawn without replacement from the training split (deterministic in ``seed``),
    read only when the calibrator asks for them."""
    split = as_samples(split)
    idx = np.random.default_rng(seed).permutation(len(split))[: min(n, len(split))]
    return split.subset(np.sort(idx))
