"""The fusion math of VanillaNet's deploy mode, in one place, on tensors.

Every BN folds into the conv before it, and two 1x1 convs with nothing non-linear between them
(which is the case once deep training has raised act_learn to 1, as leaky_relu with slope 1 is
the identity) merge into one conv. The arithmetic runs in float64 so that merging 4096-wide
layers adds no visible rounding, and the results are contiguous (a non-contiguous merged weight
made the authors' deploy model slower than the training one, their issue #17).

The modules' ``switch_to_deploy`` call them (through ``bn_of`` and the ``*_module`` helpers),
and nothing else fuses: a checkpoint file is fused by building the network it describes and
switching that (models/checkpoint/backbone_weights.py).
"""
from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..config_error import ConfigError

Tensor = torch.Tensor


class BN(NamedTuple):
    """What folding needs of a BN layer in eval mode."""
    weight: Tensor
    bias: Tensor
    running_mean: Tensor
    running_var: Tensor
    eps: float


@torch.no_grad()
def fold_bn(weight: Tensor, bias: Optional[Tensor], bn: BN) -> Tuple[Tensor, Tensor]:
    """(weight, bias) of one conv equal to ``bn(conv(x))``.

    t = gamma / sqrt(running_var + eps); W' = W * t per output channel;
    b' = beta + (b - running_mean) * t.
    """
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


def bn_of(module: nn.Module) -> BN:
    """The folding view of a BN layer; any other normalisation cannot be folded."""
    if not isinstance(module, _BatchNorm):
        raise ConfigError(f'cannot fuse {type(module).__name__}: only BatchNorm folds into the '
                         f'conv before it (use norm_cfg=dict(type="BN") or "SyncBN")')
    if module.running_var is None:
        raise ConfigError(f'cannot fuse {module}: it keeps no running statistics')
    return BN(module.weight, module.bias, module.running_mean, module.running_var, module.eps)


def fold_conv_bn_module(pair: nn.Sequential) -> Tuple[Tensor, Tensor]:
    """(weight, bias) of a (conv, BN) module pair folded into one conv."""
    conv, bn = pair[0], pair[1]
    return fold_bn(conv.weight, conv.bias, bn_of(bn))


def merge_conv_bn_modules(first: nn.Sequential, second: nn.Sequential) -> nn.Conv2d:
    """One conv equal to ``second(first(x))`` for two (conv, BN) module pairs, ``second`` 1x1."""
    weight, bias = merge_1x1(*fold_conv_bn_module(first), *fold_conv_bn_module(second))
    conv1 = first[0]
    merged = nn.Conv2d(conv1.in_channels, weight.shape[0], conv1.kernel_size,
                       stride=conv1.stride, padding=conv1.padding,
                       device=weight.device, dtype=weight.dtype)
    merged.weight.data.copy_(weight)
    merged.bias.data.copy_(bias)
    return merged
