"""Fake-quant modules that simulate exactly what ONNX Runtime's INT8 kernels compute.

* ``ActFakeQuant``: per-tensor activations, ranges observed as a moving average of the batch
  min/max, then frozen. Scale and zero point follow ``onnxruntime.quantization``'s
  ``compute_scale_zp``: the range always holds 0, ``scale = (rmax - rmin) / (qmax - qmin)``,
  ``zero_point = round(qmin - rmin / scale)`` (round half to even, like numpy and ORT).
* ``QuantConv2d`` / ``QuantLinear``: symmetric per-channel INT8 weights, ``scale = max|w| / 127``,
  zero point 0 (ORT's symmetric S8 weights use [-127, 127]).

Every quantization parameter lives in a buffer and every step is a tensor op (no Python branch on
data), so ``torch.onnx.export(dynamo=True)`` turns each fake-quant into a QuantizeLinear /
DequantizeLinear pair. The exporter needs shape ("Meta") kernels for the fake-quant ops that torch
does not register itself: :func:`enable_export` adds them once, on demand.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

QRANGE = {"int8": (-128, 127), "uint8": (0, 255)}
_W_QMAX = 127  # symmetric INT8 weights: [-127, 127]
_EPS = 1e-12
_EXPORT_LIB = None


def enable_export() -> None:
    """Register shape-only kernels so torch.export can trace the fake-quant ops (idempotent)."""
    global _EXPORT_LIB
    if _EXPORT_LIB is not None:
        return
    lib = torch.library.Library("aten", "IMPL")

    def _tensor_qparams(x, scale, zero_point, fake_quant_enabled, quant_min, quant_max):
        return torch.empty_like(x), torch.empty_like(x, dtype=torch.bool)

    def _per_channel(x, scale, zero_point, axis, quant_min, quant_max):
        return torch.empty_like(x), torch.empty_like(x, dtype=torch.bool)

    for name, fn in (("_fake_quantize_per_tensor_affine_cachemask_tensor_qparams", _tensor_qparams),
                     ("fake_quantize_per_channel_affine_cachemask", _per_channel)):
        try:
            lib.impl(name, fn, "Meta")
        except RuntimeError:  # torch already has one (newer versions): use it
            pass
    _EXPORT_LIB = lib


def act_qparams(lo: torch.Tensor, hi: torch.Tensor, dtype: str = "int8") -> tuple[torch.Tensor, torch.Tensor]:
    """ORT's ``compute_scale_zp`` for asymmetric per-tensor activations, in tensor ops."""
    qmin, qmax = QRANGE[dtype]
    rmin = torch.clamp(lo, max=0.0)
    rmax = torch.clamp(hi, min=0.0)
    scale = (rmax - rmin) / float(qmax - qmin)
    degenerate = scale < torch.finfo(torch.float32).eps
    scale = torch.where(degenerate, torch.ones_like(scale), scale)
    zp = torch.round(qmin - rmin / scale).clamp(qmin, qmax)
    zp = torch.where(degenerate, torch.zeros_like(zp), zp)
    return scale.float(), zp.to(torch.int32)


def weight_scales(w: torch.Tensor, per_channel: bool = True) -> torch.Tensor:
    """Symmetric scales ``max|w| / 127`` per output channel (axis 0), or one shared by all channels."""
    absmax = w.detach().abs().flatten(1).amax(dim=1)
    if not per_channel:
        absmax = absmax.amax().expand_as(absmax).clone()
    return torch.clamp(absmax, min=_EPS) / _W_QMAX


def fake_quant_weight(w: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    # quant range [-128, 127] is what ONNX accepts; symmetric scales never produce -128.
    return torch.fake_quantize_per_channel_affine(w, scale, zero_point, 0, -128, 127)


class ActFakeQuant(nn.Module):
    """Per-tensor activation fake-quant with a moving-average min/max observer."""

    def __init__(self, dtype: str = "int8", momentum: float = 0.01) -> None:
        super().__init__()
        if dtype not in QRANGE:
            raise ValueError(f"dtype must be one of {sorted(QRANGE)}")
        self.dtype = dtype
        self.quant_min, self.quant_max = QRANGE[dtype]
        self.momentum = float(momentum)
        self.observe = True  # set False to freeze the observed range
        self.register_buffer("min_val", torch.tensor(0.0))
        self.register_buffer("max_val", torch.tensor(0.0))
        self.register_buffer("seen", torch.tensor(False))
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("zero_point", torch.tensor(0, dtype=torch.int32))

    @torch.no_grad()
    def _observe(self, x: torch.Tensor) -> None:
        lo, hi = x.detach().min().float(), x.detach().max().float()
        # the first batch sets the range; later ones move it by `momentum`
        m = torch.where(self.seen, torch.tensor(self.momentum), torch.tensor(1.0))
        self.min_val.add_(m * (lo - self.min_val))
        self.max_val.add_(m * (hi - self.max_val))
        self.seen.fill_(True)
        scale, zp = act_qparams(self.min_val, self.max_val, self.dtype)
        self.scale.copy_(scale)
        self.zero_point.copy_(zp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.observe:
            self._observe(x)
        return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, self.quant_min, self.quant_max)

    def extra_repr(self) -> str:
        return f"dtype={self.dtype}, observe={self.observe}"


class _WeightQuant:
    """Mixin: per-channel symmetric weight fake-quant with scales kept in buffers."""

    def _init_weight_quant(self, per_channel: bool) -> None:
        out = self.weight.shape[0]
        self.per_channel = per_channel
        self.register_buffer("w_scale", weight_scales(self.weight, per_channel))
        self.register_buffer("w_zero_point", torch.zeros(out, dtype=torch.int32))

    def quantized_weight(self) -> torch.Tensor:
        if self.training:  # weights move while training: follow them
            self.refresh_scales_()
        return fake_quant_weight(self.weight, self.w_scale, self.w_zero_point)

    @torch.no_grad()
    def refresh_scales_(self) -> None:
        self.w_scale.copy_(weight_scales(self.weight, self.per_channel))


class QuantConv2d(nn.Conv2d, _WeightQuant):
    """A Conv2d whose weights are fake-quantized symmetric per-channel INT8."""

    @classmethod
    def from_float(cls, conv: nn.Conv2d, per_channel: bool = True) -> "QuantConv2d":
        q = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None, padding_mode=conv.padding_mode)
        q.load_state_dict(conv.state_dict())
        q._init_weight_quant(per_channel)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.quantized_weight(), self.bias)


class QuantLinear(nn.Linear, _WeightQuant):
    """A Linear with fake-quantized per-channel INT8 weights and a fake-quantized input."""

    @classmethod
    def from_float(cls, linear: nn.Linear, act_dtype: str, momentum: float, per_channel: bool = True) -> "QuantLinear":
        q = cls(linear.in_features, linear.out_features, bias=linear.bias is not None)
        q.load_state_dict(linear.state_dict())
        q._init_weight_quant(per_channel)
        q.input_quant = ActFakeQuant(act_dtype, momentum)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.input_quant(x), self.quantized_weight(), self.bias)
