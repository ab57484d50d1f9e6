"""Quantization-aware training: ``prepare_qat(model, cfg)`` -> train -> ``convert_qat(model)``.

``prepare_qat`` copies the model, folds BatchNorm into the convolution before it, swaps every
Conv2d / Linear for a fake-quantized twin (symmetric per-channel INT8 weights) and puts per-tensor
activation fake-quant where ONNX Runtime quantizes: the model input, after each conv's ReLU (or
after the conv when no ReLU follows) and before each Linear. ``convert_qat`` freezes the observers
and the weight scales: the model then computes exactly what the INT8 graph computes, and
``export_qat_onnx`` writes that graph with INT8 weight initializers that ORT fuses into QLinearConv.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from .. import _io
from ..errors import StageError
from . import _qdq_onnx
from ._fakequant import ActFakeQuant, QuantConv2d, QuantLinear, enable_export
from ._fold import fold_bn_
from .config import QATConfig

__all__ = ["QATConfig", "QATModel", "prepare_qat", "convert_qat", "freeze_observers_", "export_qat_onnx", "float_twin", "load_qat", "activation_ranges"]

_ACTIVATIONS = (nn.ReLU, nn.ReLU6)


class QATModel(nn.Module):
    """The fake-quantized model: the input quantizer, then the prepared network."""

    def __init__(self, model: nn.Module, input_quant: ActFakeQuant) -> None:
        super().__init__()
        self.input_quant = input_quant
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.input_quant(x))


def prepare_qat(model: nn.Module, cfg: QATConfig | None = None) -> QATModel:
    """A fake-quantized copy of ``model`` (BN folded, INT8 weights and activations simulated), in train mode."""
    cfg = cfg or QATConfig()
    enable_export()
    m = copy.deepcopy(model).cpu().eval()
    fold_bn_(m)
    _swap_(m, cfg)
    remaining = [n for n, mod in m.named_modules() if isinstance(mod, nn.modules.batchnorm._BatchNorm)]
    if remaining:
        raise StageError(f"qat: BatchNorm {remaining[0]!r} does not follow a Conv2d in an nn.Sequential, so it cannot "
                         "be folded; place each BatchNorm2d right after its Conv2d.")
    return QATModel(m, ActFakeQuant(cfg.activation_type, cfg.observer_momentum)).train()


def freeze_observers_(model: nn.Module) -> nn.Module:
    """Stop every activation range from moving (weights keep training)."""
    for mod in model.modules():
        if isinstance(mod, ActFakeQuant):
            mod.observe = False
    return model


def convert_qat(model: nn.Module) -> nn.Module:
    """The deployable fake-quant model: observers frozen, weight scales fixed, eval mode."""
    m = copy.deepcopy(model).eval()
    freeze_observers_(m)
    for mod in m.modules():
        if isinstance(mod, (QuantConv2d, QuantLinear)):
            mod.refresh_scales_()
        if isinstance(mod, ActFakeQuant) and not bool(mod.seen):
            raise StageError("qat: an activation quantizer never saw data; run calibration batches or training "
                             "before convert_qat.")
    return m


def export_qat_onnx(model: nn.Module, path: str | Path, example_input: torch.Tensor, opset: int = 18) -> dict:
    """Export a converted QAT model to ONNX with INT8 weight initializers, with the input and output names
    of every other exported artifact; return what was written."""
    from ..export import INPUT_NAME, OUTPUT_NAME

    enable_export()
    model = model.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", FutureWarning)  # the exporter's own deprecation notices, not the user's
        program = torch.onnx.export(model, (example_input,), dynamo=True, external_data=False, opset_version=opset,
                                    dynamic_shapes=({0: "batch"},), verbose=False, input_names=[INPUT_NAME],
                                    output_names=[OUTPUT_NAME])
    proto = program.model_proto
    _qdq_onnx.scalar_qparams_(proto)
    n_weights = _qdq_onnx.quantize_weights_(proto)
    n_biases = _qdq_onnx.quantize_biases_(proto)
    _qdq_onnx.strip_debug_info_(proto)
    onnx.checker.check_model(proto)
    _io.write_bytes(path, proto.SerializeToString())
    ops = [n.op_type for n in proto.graph.node]
    return {"path": str(path), "size_mb": _io.file_size_mb(path), "int8_weights": n_weights, "int32_biases": n_biases,
            "quantize_linear": ops.count("QuantizeLinear"), "dequantize_linear": ops.count("DequantizeLinear"),
            "initializer_elements": _qdq_onnx.int8_initializer_count(proto)}


def float_twin(model: QATModel) -> nn.Module:
    """The converted QAT model as a plain float network for another quantizer (LiteRT's PT2E): each fake-quant conv
    and linear becomes a plain one holding its fake-quantized weights (already on the symmetric per-channel INT8 grid,
    so a per-channel max|w|/127 scale recovers them exactly), and every activation quantizer an identity."""
    def plain(child: nn.Module) -> nn.Module | None:
        if isinstance(child, ActFakeQuant):
            return nn.Identity()
        if not isinstance(child, (QuantConv2d, QuantLinear)):
            return None
        twin = (nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size, stride=child.stride,
                          padding=child.padding, dilation=child.dilation, groups=child.groups,
                          bias=child.bias is not None, padding_mode=child.padding_mode)
                if isinstance(child, QuantConv2d) else
                nn.Linear(child.in_features, child.out_features, bias=child.bias is not None))
        with torch.no_grad():
            twin.weight.copy_(child.quantized_weight())
            if child.bias is not None:
                twin.bias.copy_(child.bias)
        return twin

    return _replaced(model.model, plain)


def _replaced(model: nn.Module, swap) -> nn.Module:
    """A copy of ``model`` (eval) with every submodule for which ``swap(child)`` returns a module replaced by it;
    ``swap`` returning None looks inside that child instead."""
    m = copy.deepcopy(model).eval()

    def walk(module: nn.Module) -> None:
        for name, child in module._modules.items():
            new = swap(child) if child is not None else None
            if new is not None:
                module._modules[name] = new
            elif child is not None:
                walk(child)
    walk(m)
    return m


class _Tap(nn.Module):
    """An identity that keeps its input and the learned range of the activation quantizer it stands in for."""

    def __init__(self, quant: ActFakeQuant, seen: list) -> None:
        super().__init__()
        self.lo, self.hi, self.seen = float(quant.min_val), float(quant.max_val), seen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((x.detach().clone(), self.lo, self.hi))
        return x


@torch.no_grad()
def activation_ranges(model: QATModel, x: torch.Tensor) -> list[tuple[torch.Tensor, float, float]]:
    """Each activation quantizer's input on ``x`` as :func:`float_twin` computes it (the other quantizers off), with
    the range the QAT learned for it: what another quantizer needs to reuse the QAT's ranges for the same tensors."""
    seen: list = []
    _replaced(model, lambda child: _Tap(child, seen) if isinstance(child, ActFakeQuant) else None)(x)
    return seen


def load_qat(student: nn.Module, path: str | Path, cfg: QATConfig | None = None) -> QATModel:
    """The converted QAT model saved by the QAT stage at ``path``, rebuilt around a copy of the (distilled) student."""
    from ..models import load_checkpoint

    model = freeze_observers_(prepare_qat(student, cfg).eval())
    load_checkpoint(path, model, key="qat model")
    return model


def _swap_(module: nn.Module, cfg: QATConfig) -> None:
    """Replace convs and linears by fake-quant twins and insert activation quantizers, recursively."""
    act = lambda: ActFakeQuant(cfg.activation_type, cfg.observer_momentum)  # noqa: E731
    names = list(module._modules)
    for i, name in enumerate(names):
        child = module._modules[name]
        if isinstance(child, nn.Conv2d) and not isinstance(child, QuantConv2d):
            qconv = QuantConv2d.from_float(child, cfg.per_channel)
            nxt = _next_real(module, names, i) if isinstance(module, nn.Sequential) else None
            if nxt is not None and isinstance(module._modules[nxt], _ACTIVATIONS):
                module._modules[name] = qconv
                module._modules[nxt] = nn.Sequential(module._modules[nxt], act())
            else:
                module._modules[name] = nn.Sequential(qconv, act())
        elif isinstance(child, nn.Linear) and not isinstance(child, QuantLinear):
            module._modules[name] = QuantLinear.from_float(child, cfg.activation_type, cfg.observer_momentum,
                                                           cfg.per_channel)
        elif child is not None and not isinstance(child, (ActFakeQuant, QuantConv2d, QuantLinear)):
            # a ReLU already wrapped with its quantizer is an nn.Sequential: recursing into it is harmless
            _swap_(child, cfg)


def _next_real(seq: nn.Module, names: list[str], i: int) -> str | None:
    for nxt in names[i + 1:]:
        if not isinstance(seq._modules[nxt], nn.Identity):
            return nxt
    return None
