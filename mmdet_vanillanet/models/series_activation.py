"""The series-informed activation: ReLU followed by a learned depthwise conv and BN.

The paper's A_s(x) = sum over a (2n+1)^2 neighbourhood of a * relu(x + shift) + b is exactly a
depthwise conv of relu(x) with a (2n+1)x(2n+1) kernel (n = ``act_num``), followed here by BN.

Fused for deployment, the BN folds into the depthwise conv (a weight and a bias), and a
downsampling block's max pool folds in front of it: y = dwconv(relu(max_pool(x))) + b, computed
by ``ops.activation_kernel`` (PyTorch's ops, or on a GPU one Triton kernel that pools as it
reads the map; ``act_impl`` chooses).
"""
import torch
import torch.nn as nn
from mmcv.cnn import build_norm_layer
from mmengine.model.weight_init import trunc_normal_

from ..ops.activation_kernel import check_act_impl, fused_activation, implementation_for
from ..ops.lean_training import series_activation
from .fusion import bn_of, fold_bn


class SeriesActivation(nn.Module):
    """Keys (training): ``weight``, ``bn.*``; after ``switch_to_deploy``: ``weight``, ``bias``.
    ``pool``: the fused form's max pool, kernel and stride (1: none), which the block holding
    the activation folds in (``VanillaBlock``).

    Args:
        channels: channels of the map.
        act_num: half-width of the depthwise kernel, which is (2 * act_num + 1)^2.
        norm_cfg: the BN after the depthwise conv (training layout only).
        deploy: build the fused form (depthwise conv with bias, no BN).
        act_impl: 'auto', 'triton' or 'torch': how the fused form runs (ops.activation_kernel).
    """

    def __init__(self, channels: int, act_num: int = 3, norm_cfg: dict = dict(type='BN', eps=1e-6),
                 deploy: bool = False, act_impl: str = 'auto'):
        super().__init__()
        self.act_num = act_num
        self.channels = channels
        self.deploy = deploy
        self.pool = 1
        self.act_impl = check_act_impl(act_impl)
        self.lean = True  # the lean training ops (ops.lean_training); the backbone sets it
        kernel = 2 * act_num + 1
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel, kernel))
        trunc_normal_(self.weight, std=.02)
        if deploy:
            self.bias = nn.Parameter(torch.zeros(channels))
        else:
            self.bn = build_norm_layer(norm_cfg, channels)[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.deploy:
            return fused_activation(x, self.weight, self.bias, self.pool, self.act_impl)
        return series_activation(x, self.weight, self.bn, self.lean)

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
        pool = f', pool={self.pool}' if self.deploy and self.pool > 1 else ''
        return (f'{self.channels}, act_num={self.act_num}, deploy={self.deploy}{pool}, '
                f'act_impl={self.act_impl!r}')
