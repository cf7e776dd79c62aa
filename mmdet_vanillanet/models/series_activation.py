"""The series-informed activation: ReLU followed by a learned depthwise conv and BN.

The paper's A_s(x) = sum over a (2n+1)^2 neighbourhood of a * relu(x + shift) + b, which is
exactly a depthwise conv of relu(x) with a (2n+1)x(2n+1) kernel (n = ``act_num``).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import build_norm_layer
from mmengine.model.weight_init import trunc_normal_

from .fusion import fold_bn


class SeriesActivation(nn.Module):
    """Keys (training): ``weight``, ``bn.*``; after ``switch_to_deploy``: ``weight``, ``bias``."""

    def __init__(self, channels: int, act_num: int = 3, norm_cfg: dict = None,
                 deploy: bool = False):
        super().__init__()
        self.act_num = act_num
        self.channels = channels
        self.deploy = deploy
        kernel = 2 * act_num + 1
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel, kernel))
        trunc_normal_(self.weight, std=.02)
        if deploy:
            self.bias = nn.Parameter(torch.zeros(channels))
        else:
            self.bn = build_norm_layer(norm_cfg, channels)[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(F.relu(x), self.weight, self.bias if self.deploy else None,
                     padding=self.act_num, groups=self.channels)
        return x if self.deploy else self.bn(x)

    def switch_to_deploy(self):
        if self.deploy:
            return
        weight, bias = fold_bn(self.weight, None, self.bn)
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias)
        del self.bn
        self.deploy = True

    def extra_repr(self) -> str:
        return f'{self.channels}, act_num={self.act_num}, deploy={self.deploy}'
