"""The series-informed activation: ReLU followed by a learned depthwise conv and BN.

The paper's A_s(x) = sum over a (2n+1)^2 neighbourhood of a * relu(x + shift) + b, which is
exactly a depthwise conv of relu(x) with a (2n+1)x(2n+1) kernel (n = ``act_num``).

Once fused, the activation is y = dwconv(relu(x)) + b, and on a GPU it runs as one Triton
kernel (``series_activation_triton``) that also applies the max pool of a downsampling block
as it reads the map. ``act_impl`` chooses how the fused activation runs: 'torch' (PyTorch ops),
'triton' (the kernel, an error where it cannot run), 'auto' (the kernel where it can run on a
CUDA tensor, PyTorch elsewhere). Both compute the same function. The training-mode activation
(with its BN, and autograd) always runs PyTorch.
"""
import functools
import os
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import build_norm_layer
from mmengine.model.weight_init import trunc_normal_

from ..errors import InputError
from .fusion import bn_of, fold_bn

ACT_IMPLS = ('auto', 'triton', 'torch')
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_act_impl(value) -> str:
    if value not in ACT_IMPLS:
        raise InputError(f'act_impl={value!r}: choose one of {list(ACT_IMPLS)} (auto: the '
                         f'Triton kernel for CUDA tensors where it runs, else PyTorch)')
    return value


@functools.lru_cache(maxsize=None)
def triton_kernel():
    """(the kernel launcher, None) or (None, why Triton cannot be used).

    Imported on first use, not with the model: Triton is optional, and CPU-only users and the
    training path never need it.
    """
    try:
        from . import series_activation_triton
    except ImportError as err:
        return None, f'Triton does not import ({err}); pip install triton'
    return series_activation_triton.series_activation, None


class SeriesActivation(nn.Module):
    """Keys (training): ``weight``, ``bn.*``; after ``switch_to_deploy``: ``weight``, ``bias``.

    Args:
        channels: channels of the map.
        act_num: half-width of the depthwise kernel, which is (2 * act_num + 1)^2.
        norm_cfg: the BN after the depthwise conv (training layout only).
        deploy: build the fused form (depthwise conv with bias, no BN).
        act_impl: 'auto', 'triton' or 'torch': how the fused form runs (module docstring).
    """

    def __init__(self, channels: int, act_num: int = 3,
                 norm_cfg: Optional[dict] = dict(type='BN', eps=1e-6),
                 deploy: bool = False, act_impl: str = 'auto'):
        super().__init__()
        self.act_num = act_num
        self.channels = channels
        self.deploy = deploy
        self.act_impl = check_act_impl(act_impl)
        kernel = 2 * act_num + 1
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel, kernel))
        trunc_normal_(self.weight, std=.02)
        if deploy:
            self.bias = nn.Parameter(torch.zeros(channels))
        else:
            self.bn = build_norm_layer(norm_cfg, channels)[1]

    def forward(self, x: torch.Tensor, pool: int = 1) -> torch.Tensor:
        """The activation of ``max_pool2d(x, pool)`` (``pool=1``: of ``x``)."""
        if self.deploy and self.act_impl != 'torch':
            kernel, why_not = self._kernel_for(x)
            if kernel is not None:
                if torch.is_autocast_enabled(x.device.type):
                    x = x.to(torch.get_autocast_dtype(x.device.type))
                return kernel(x, self.weight, self.bias, pool)
            if self.act_impl == 'triton':
                raise InputError(f"act_impl='triton' cannot run here: {why_not}; use "
                                 f"act_impl='auto' to fall back to PyTorch")
        if pool > 1:
            x = F.max_pool2d(x, pool)
        x = F.conv2d(F.relu(x), self.weight, self.bias if self.deploy else None,
                     padding=self.act_num, groups=self.channels)
        return x if self.deploy else self.bn(x)

    def implementation_for(self, x: torch.Tensor) -> str:
        """What a call on ``x`` runs: 'triton', or 'torch (why not the kernel)'."""
        if not self.deploy or self.act_impl == 'torch':
            return 'torch'
        kernel, why_not = self._kernel_for(x)
        return 'triton' if kernel is not None else f'torch ({why_not})'

    def _kernel_for(self, x: torch.Tensor):
        """(the Triton kernel, None) if it can compute this call, else (None, why not)."""
        interpreted = os.environ.get('TRITON_INTERPRET') == '1'
        if x.device.type != 'cuda' and (self.act_impl == 'auto' or not interpreted):
            return None, (f'the input is on {x.device.type}; the kernel runs on CUDA devices '
                          f'(on the CPU only under TRITON_INTERPRET=1, for tests)')
        if x.device.type == 'cuda' and (torch.version.hip is not None
                                        or torch.cuda.get_device_capability(x.device) < (8, 0)):
            return None, (f'{torch.cuda.get_device_name(x.device)} is not an NVIDIA GPU of '
                          f'compute capability 8.0 or newer, which the kernel needs (tf32)')
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return None, ('a traced or exported graph would not record a Triton kernel; trace '
                          "or export with act_impl='torch'")
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
            return None, ('it has no backward pass; run inference under torch.no_grad() or '
                          'torch.inference_mode()')
        dtype = (torch.get_autocast_dtype(x.device.type)
                 if torch.is_autocast_enabled(x.device.type) else x.dtype)
        if x.dim() != 4 or dtype not in KERNEL_DTYPES or not x.is_contiguous():
            return None, (f'it takes contiguous NCHW fp32/fp16/bf16 maps, got a '
                          f'{x.dim()}-d {dtype} tensor'
                          + ('' if x.is_contiguous() else ' in another memory format'))
        return triton_kernel()

    def switch_to_deploy(self):
        if self.deploy:
            return
        weight, bias = fold_bn(self.weight, None, bn_of(self.bn))
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias)
        del self.bn
        self.deploy = True

    def extra_repr(self) -> str:
        return (f'{self.channels}, act_num={self.act_num}, deploy={self.deploy}, '
                f'act_impl={self.act_impl!r}')
