"""The series-informed activation: ReLU followed by a learned depthwise conv and BN.

The paper's A_s(x) = sum over a (2n+1)^2 neighbourhood of a * relu(x + shift) + b is exactly a
depthwise conv of relu(x) with a (2n+1)x(2n+1) kernel (n = ``act_num``), followed here by BN.
In a downsampling block it comes right after the block's max pool, which it applies first: it
is given that pool when it is made, so that the fused form, which pools as it reads the map,
is the same module with the same pool.

Fused for deployment, the BN folds into the depthwise conv (a weight and a bias): y =
dwconv(relu(max_pool(x))) + b, computed by ``ops.activation_kernel`` (PyTorch's ops, or on a GPU
one Triton kernel that pools as it reads the map; ``act_impl`` chooses).
"""
from dataclasses import dataclass

import torch
import torch.nn as nn
from mmcv.cnn import build_norm_layer
from mmengine.model.weight_init import trunc_normal_

from ..config_error import ConfigError
from ..ops.activation_kernel import check_act_impl, fused_activation, implementation_for
from ..ops.lean_training import hooked, plain_if, pool, series_activation
from .fusion import bn_of, fold_bn


def check_bool(name: str, value) -> bool:
    """``value`` if it is True or False: a config's 'no' or 1 is not taken for either."""
    if not isinstance(value, bool):
        raise ConfigError(f'{name}={value!r}: must be True or False')
    return value


@dataclass
class Implementation:
    """How a network's modules compute, not what (either way they compute the same function):
    ``lean``, training with the lean ops (``ops.lean_training``) rather than plain autograd;
    ``act_impl``, how a fused activation runs ('auto', 'triton', 'torch';
    ``ops.activation_kernel``). One object per network: the backbone makes it and hands it to
    every block and activation it builds, which read it as they compute, so that setting it
    anywhere (the backbone's ``lean_training`` and ``act_impl``, or an activation's
    ``act_impl``) sets it for the whole network."""
    lean: bool = True
    act_impl: str = 'auto'

    def __setattr__(self, name, value):
        check = {'lean': lambda v: check_bool('lean_training', v),
                 'act_impl': check_act_impl}[name]
        super().__setattr__(name, check(value))


class SeriesActivation(nn.Module):
    """Keys (training): ``weight``, ``bn.*``; after ``switch_to_deploy``: ``weight``, ``bias``.

    Args:
        channels: channels of the map.
        act_num: half-width of the depthwise kernel, which is (2 * act_num + 1)^2.
        norm_cfg: the BN after the depthwise conv (training layout only).
        deploy: build the fused form (depthwise conv with bias, no BN).
        pool: the block's max pool, kernel and stride, applied first (1: none).
        grid: the block's adaptive max pool to ``grid`` x ``grid`` (the ada_pool archs),
            applied first instead (0: none).
        implementation: the network's ``Implementation`` (None: one of this module's own).
    """

    def __init__(self, channels: int, act_num: int = 3, norm_cfg: dict = dict(type='BN', eps=1e-6),
                 deploy: bool = False, pool: int = 1, grid: int = 0,
                 implementation: Implementation = None):
        super().__init__()
        self.act_num = act_num
        self.channels = channels
        self.deploy = deploy
        self.pool = pool
        self.grid = grid
        self.implementation = implementation or Implementation()
        kernel = 2 * act_num + 1
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel, kernel))
        trunc_normal_(self.weight, std=.02)
        if deploy:
            self.bias = nn.Parameter(torch.zeros(channels))
        else:
            self.bn = build_norm_layer(norm_cfg, channels)[1]

    @property
    def act_impl(self) -> str:
        """How the fused form runs: the network's choice (``Implementation``)."""
        return self.implementation.act_impl

    @act_impl.setter
    def act_impl(self, value: str):
        self.implementation.act_impl = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lean = self.implementation.lean
        with plain_if(hooked(self)):  # called alone with a hook: as in VanillaNet.forward
            if self.grid:
                x = pool(x, 'adaptive', self.grid, lean)
            if self.deploy:  # the max pool, relu and depthwise conv in one call
                return fused_activation(x, self.weight, self.bias, self.pool, self.act_impl)
            if self.pool > 1:
                x = pool(x, 'max', self.pool, lean)
            return series_activation(x, self.weight, self.bn, lean)

    def implementation_for(self, x: torch.Tensor) -> str:
        """What the fused form runs on ``x``: 'triton', or 'torch (why not the kernel)'."""
        if not self.deploy:
            return 'torch'
        return implementation_for(x, self.weight, self.pool, self.act_impl)

    def switch_to_deploy(self):
        """Fold the BN into the depthwise conv."""
        if self.deploy:
            return
        weight, bias = fold_bn(self.weight, None, bn_of(self.bn))
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias)
        del self.bn
        self.deploy = True

    def extra_repr(self) -> str:
        pooling = (f', adaptive max pool to {self.grid}x{self.grid}' if self.grid else
                   f', max pool {self.pool}' if self.pool > 1 else '')
        return (f'{self.channels}, act_num={self.act_num}, deploy={self.deploy}{pooling}, '
                f'act_impl={self.act_impl!r}')
