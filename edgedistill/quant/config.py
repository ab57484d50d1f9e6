"""The ``[qat]`` recipe section, kept free of torch so that loading a recipe never imports it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .._schema import field


@dataclass
class QATConfig:
    """The recipe's ``[qat]`` section."""

    enabled: bool = False
    epochs: int = field(3, ge=0, le=1000)
    lr: float = field(2e-4, gt=0.0, le=1.0)
    weight_decay: float = field(0.0, ge=0.0)
    teacher: Literal["fp32_student", "teacher"] = "fp32_student"
    alpha: float = field(0.3, ge=0.0, le=1.0, help="weight of the hard-label term in the KD loss")
    temperature: float = field(2.0, gt=0.0, le=100.0)
    calibration_batches: int = field(16, ge=0, help="forward passes that set activation ranges before training")
    freeze_observers_epoch: int = field(1, ge=0, help="epoch from which activation ranges stop moving")
    observer_momentum: float = field(0.01, gt=0.0, le=1.0)
    per_channel: bool = True
    activation_type: Literal["int8", "uint8"] = "int8"
    min_agreement: float = field(0.995, ge=0.0, le=1.0, help="ORT-vs-PyTorch top-1 agreement the stage requires")
