"""Fold BatchNorm into the convolution before it, as ONNX Runtime does before quantizing."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new Conv2d computing ``bn(conv(x))`` with BN's running statistics (eval semantics)."""
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                      dilation=conv.dilation, groups=conv.groups, bias=True, padding_mode=conv.padding_mode)
    gamma = bn.weight if bn.affine else torch.ones_like(bn.running_mean)
    beta = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
    factor = gamma / torch.sqrt(bn.running_var + bn.eps)
    fused.weight.copy_(conv.weight * factor.reshape(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.copy_((bias - bn.running_mean) * factor + beta)
    return fused


def fold_bn_(model: nn.Module) -> int:
    """Fold every ``Conv2d -> BatchNorm2d`` pair inside an ``nn.Sequential`` in place; return the count.

    The BatchNorm is replaced by ``nn.Identity`` so module paths (and taps) stay valid.
    """
    count = 0
    for module in list(model.modules()):
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = module._modules[a], module._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                module._modules[a] = fold_conv_bn(conv, bn)
                module._modules[b] = nn.Identity()
                count += 1
    return count
