"""The fusion math of VanillaNet's deploy mode, in one place.

Every BN folds into the conv before it, and two 1x1 convs with nothing non-linear between them
(which is the case once deep training has raised act_learn to 1, as leaky_relu with slope 1 is
the identity) merge into one conv. The arithmetic runs in float64 so that merging 4096-wide
layers adds no visible rounding, and the results are contiguous (a non-contiguous merged weight
made the authors' deploy model slower than the training one, their issue #17).
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn

Tensor = torch.Tensor


@torch.no_grad()
def fold_bn(weight: Tensor, bias: Optional[Tensor], bn: nn.Module) -> Tuple[Tensor, Tensor]:
    """(weight, bias) of one conv equal to ``bn(conv(x))`` with ``bn`` in eval mode.

    t = gamma / sqrt(running_var + eps); W' = W * t per output channel;
    b' = beta + (b - running_mean) * t.
    """
    if bn.running_var is None:
        raise ValueError(f'cannot fold {bn}: it keeps no running statistics')
    t = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    w = weight.double() * t.reshape(-1, *[1] * (weight.dim() - 1))
    b = bn.bias.double() - bn.running_mean.double() * t
    if bias is not None:
        b = b + bias.double() * t
    return w.to(weight.dtype).contiguous(), b.to(weight.dtype).contiguous()


@torch.no_grad()
def merge_1x1(w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tuple[Tensor, Tensor]:
    """(weight, bias) of one conv equal to conv2(conv1(x)), where conv2 is 1x1.

    W = W2 @ W1 (over the middle channels, for every tap of conv1's kernel); b = b2 + W2 @ b1.
    """
    w2 = w2.double().flatten(1)
    w = torch.einsum('om,mikl->oikl', w2, w1.double())
    b = b2.double() + w2 @ b1.double()
    return w.to(w1.dtype).contiguous(), b.to(w1.dtype).contiguous()


def merge_conv_bn_pair(first: nn.Sequential, second: nn.Sequential) -> nn.Conv2d:
    """One conv equal to ``second(first(x))`` for two (conv, BN) pairs, ``second`` 1x1."""
    conv1, conv2 = first[0], second[0]
    w1, b1 = fold_bn(conv1.weight, conv1.bias, first[1])
    w2, b2 = fold_bn(conv2.weight, conv2.bias, second[1])
    weight, bias = merge_1x1(w1, b1, w2, b2)
    merged = nn.Conv2d(conv1.in_channels, conv2.out_channels, conv1.kernel_size,
                       stride=conv1.stride, padding=conv1.padding,
                       device=weight.device, dtype=weight.dtype)
    merged.weight.data.copy_(weight)
    merged.bias.data.copy_(bias)
    return merged
