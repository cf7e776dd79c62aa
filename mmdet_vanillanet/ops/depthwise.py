"""The series activation's depthwise conv, and its weight gradient (``DepthwiseConv``: the conv
that the lean training ops differentiate).

PyTorch's CPU kernel for a depthwise conv's weight gradient runs far below the forward's speed
(VanillaNet's 9x9 kernels at 512 channels and 100x168: 3.4 s against the forward's 0.17 s, on 2
cores); written as a grouped conv of the padded input with the output gradient as the kernel, the
same sums run at the forward's speed (0.24 s). The CUDA kernels have no such gap and are used as
they are.
"""
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import Function


def depthwise_conv(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """A stride-1 depthwise conv that keeps the map's size (k x k kernel, k odd)."""
    return F.conv2d(x, weight, bias, 1, weight.shape[-1] // 2, 1, weight.shape[0])


def relu_dwconv(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                conv: Callable = depthwise_conv) -> Tensor:
    """The series activation but its BN, dwconv(relu(x)), in training (``conv``: the lean ops'
    ``DepthwiseConv``) and deployed (the BN folded into ``bias``)."""
    return conv(F.relu(x), weight, *(() if bias is None else (bias, )))


def depthwise_weight_grad(grad: Tensor, x: Tensor, weight: Tensor) -> Tensor:
    """d(loss)/d(weight) of ``depthwise_conv(x, weight)`` for the output gradient ``grad``, in
    x's type: for channel c, the correlation of the padded x[:, c] with grad[:, c], summed over
    the batch."""
    k = weight.shape[-1]
    pad = k // 2
    if x.device.type != 'cpu':
        return torch.ops.aten.convolution_backward(
            grad, x, weight.to(x.dtype), None, [1, 1], [pad, pad], [1, 1], False, [0, 0],
            weight.shape[0], [False, True, False])[1]
    n, c, h, w = x.shape
    # Channel-major: group c of the input holds x[:, c] of every image, and kernel c is
    # grad[:, c], so group c's output sums their correlations over the batch.
    padded = F.pad(x, (pad, pad, pad, pad)).transpose(0, 1).reshape(1, c * n, h + 2 * pad,
                                                                   w + 2 * pad)
    kernel = grad.to(x.dtype).transpose(0, 1).reshape(c, n, h, w)
    # In x's type whatever autocast region the backward pass is called in, as PyTorch's own
    # backward kernels compute.
    with torch.autocast('cpu', enabled=False):
        return F.conv2d(padded, kernel, groups=c).reshape(c, 1, k, k)


class DepthwiseConv(Function):
    """``depthwise_conv(x, weight)`` whose backward pass is PyTorch's input-gradient kernel and
    ``depthwise_weight_grad``. In and out in the dtype the conv computes in (autocast's)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor) -> Tensor:
        out = depthwise_conv(x, weight)
        ctx.save_for_backward(x.to(out.dtype), weight)
        ctx.x_dtype = x.dtype
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            pad = weight.shape[-1] // 2
            grad_x = torch.ops.aten.convolution_backward(
                grad, x, weight.to(x.dtype), None, [1, 1], [pad, pad], [1, 1], False, [0, 0],
                weight.shape[0], [True, False, False])[0].to(ctx.x_dtype)
        if ctx.needs_input_grad[1]:
            grad_weight = depthwise_weight_grad(grad, x, weight).to(weight.dtype)
        return grad_x, grad_weight
