"""Batch normalisation as the lean training ops run it: a forward pass that updates the running
statistics and returns the statistics it normalised with, and a recomputation of the output from
the kept input that updates nothing and that autograd differentiates.

This is what lets an op keep only a BN layer's input (a conv output) and recompute the layer's
output in backward: ``recompute`` gives, bit for bit, the output ``forward`` gave, and the
running statistics are updated once, by ``forward``. Both run PyTorch's own BN kernel
(``native_batch_norm``, what ``F.batch_norm`` runs on the CPU), so the output is also the plain
layer's, bit for bit, and autograd differentiates ``recompute`` with PyTorch's BN backward
kernel. ``forward`` follows ``_BatchNorm.forward`` step by step (momentum, the cumulative average
when momentum is None, ``num_batches_tracked``, eval mode with or without running statistics).

A SyncBatchNorm in a process group of more than one process normalises with the group's
statistics, which ``forward`` gathers as that layer does (each process's count, mean and
variance, combined exactly); its backward (``_GroupNorm``) reduces the two per-channel sums the
layer reduces. PyTorch's SyncBatchNorm runs only on GPUs; these run on the CPU too.
"""
from typing import NamedTuple, Optional

import torch
import torch.distributed as dist
import torch.nn as nn
from torch import Tensor
from torch.autograd import Function
from torch.nn.modules.batchnorm import _BatchNorm


class Stats(NamedTuple):
    """What a BN forward pass normalised with."""
    first: Tensor  # the batch mean; the running mean in eval mode
    second: Tensor  # 1 / sqrt(batch var + eps); the running variance in eval mode
    batch: bool  # batch statistics (training) or running ones
    group: Optional[object]  # the process group a SyncBatchNorm reduced over, or None
    count: object  # values per channel, over the group (a tensor under a group)
    eps: float


def supported(norm: nn.Module) -> bool:
    """Whether these functions compute what ``norm`` computes: an affine layer that runs
    BatchNorm's or SyncBatchNorm's own forward (BN, SyncBN, MMEngine's _BatchNormXd, which SyncBN
    becomes outside distributed runs). GN, IN and other normalisations keep their own."""
    return (isinstance(norm, _BatchNorm) and norm.affine
            and type(norm).forward in (_BatchNorm.forward, nn.SyncBatchNorm.forward))


def _sync_group(norm: nn.Module):
    """The process group a SyncBatchNorm in training synchronises over (None: none), as the
    layer decides it."""
    if not (isinstance(norm, nn.SyncBatchNorm) and dist.is_available()
            and dist.is_initialized()):
        return None
    group = norm.process_group or dist.group.WORLD
    return group if dist.get_world_size(group) > 1 else None


def _group_statistics(z: Tensor, group):
    """Mean and biased variance per channel over every process of ``group`` (float64), and the
    count (a tensor: nothing waits for the host). Each process's count, mean and sum of squared
    deviations are gathered and combined, exact for batches of different sizes."""
    var, mean = torch.var_mean(z.double().transpose(0, 1).flatten(1), dim=1, correction=0)
    count = z.numel() // z.shape[1]
    local = torch.cat([mean.new_tensor([count]), mean, var * count])
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, local, group=group)
    channels = z.shape[1]
    parts = torch.stack(gathered)
    counts, means, m2 = parts[:, :1], parts[:, 1:1 + channels], parts[:, 1 + channels:]
    total = counts.sum()
    mean = (counts * means).sum(0) / total
    m2 = (m2 + counts * (means - mean) ** 2).sum(0)
    return mean, m2 / total, total


def _accumulator(z: Tensor):
    """float32 for half-precision maps (autocast), as PyTorch's BN kernels compute; else z's."""
    return torch.promote_types(z.dtype, torch.float32)


def _group_output(z: Tensor, weight: Tensor, bias: Tensor, mean: Tensor, invstd: Tensor):
    """A SyncBatchNorm's output: (z - mean) * invstd * weight + bias."""
    shape, acc = (1, -1) + (1, ) * (z.dim() - 2), _accumulator(z)
    scale = invstd * weight.to(acc)
    out = torch.addcmul((bias.to(acc) - mean * scale).view(shape), z.to(acc), scale.view(shape))
    return out.to(z.dtype)


@torch.no_grad()
def forward(norm: _BatchNorm, z: Tensor):
    """(``norm(z)``, its Stats), the running statistics updated as ``norm``'s forward would."""
    factor = 0.0 if norm.momentum is None else norm.momentum
    if norm.training and norm.track_running_stats:
        norm.num_batches_tracked.add_(1)
        factor = (1.0 / float(norm.num_batches_tracked) if norm.momentum is None
                  else norm.momentum)
    batch = norm.training or (norm.running_mean is None and norm.running_var is None)
    tracked = not norm.training or norm.track_running_stats
    running_mean = norm.running_mean if tracked else None
    running_var = norm.running_var if tracked else None
    # As SyncBatchNorm decides it: synchronised in training mode only.
    group = _sync_group(norm) if batch and norm.training else None
    if batch and group is None and z.numel() // z.shape[1] <= 1:
        # F.batch_norm's check: one value per channel has no variance.
        raise ValueError(f'Expected more than 1 value per channel when training, got input '
                         f'size {tuple(z.shape)}')
    if group is None:
        out, mean, invstd = torch.native_batch_norm(z, norm.weight, norm.bias, running_mean,
                                                    running_var, batch, factor, norm.eps)
        if batch:
            return out, Stats(mean, invstd, True, None, z.numel() // z.shape[1], norm.eps)
        return out, Stats(running_mean, running_var, False, None, 0, norm.eps)
    mean, var, count = _group_statistics(z, group)
    if running_mean is not None:
        running_mean.mul_(1 - factor).add_(mean.to(running_mean.dtype), alpha=factor)
        unbiased = var * (count / (count - 1).clamp(min=1))
        running_var.mul_(1 - factor).add_(unbiased.to(running_var.dtype), alpha=factor)
    acc = _accumulator(z)
    mean, invstd = mean.to(acc), torch.rsqrt(var + norm.eps).to(acc)
    out = _group_output(z, norm.weight, norm.bias, mean, invstd)
    return out, Stats(mean, invstd, True, group, count, norm.eps)


def recompute(z: Tensor, weight: Tensor, bias: Tensor, stats: Stats) -> Tensor:
    """The output ``forward`` gave for z, bit for bit, updating nothing, differentiable: the batch
    statistics are recomputed by the same kernel from the same z (an affine map would round
    differently), a group's are the ones ``forward`` gathered."""
    if stats.group is not None:
        return _GroupNorm.apply(z, weight, bias, stats)
    if stats.batch:
        return torch.native_batch_norm(z, weight, bias, None, None, True, 0.0, stats.eps)[0]
    return torch.native_batch_norm(z, weight, bias, stats.first, stats.second, False, 0.0,
                                   stats.eps)[0]


class _GroupNorm(Function):
    """A SyncBatchNorm's output from the group's statistics; its backward reduces the two
    per-channel sums over the group, as the layer's does."""

    @staticmethod
    def forward(ctx, z: Tensor, weight: Tensor, bias: Tensor, stats: Stats):
        ctx.save_for_backward(z, weight)
        ctx.stats = stats
        return _group_output(z, weight, bias, stats.first, stats.second)

    @staticmethod
    def backward(ctx, grad: Tensor):
        z, weight = ctx.saved_tensors
        stats = ctx.stats
        needs_weight_grad = any(ctx.needs_input_grad[1:3])
        # The weight and bias get this process's sums (DDP averages them over the group), the
        # input the group's.
        shape = (1, -1) + (1, ) * (z.dim() - 2)
        mean, invstd = stats.first, stats.second
        acc = _accumulator(z)
        dy, xmu = grad.to(acc), z.to(acc) - mean.view(shape)
        dims = [0] + list(range(2, z.dim()))
        sums = torch.stack([dy.sum(dims), (dy * xmu).sum(dims)])
        grad_weight = (sums[1] * invstd).to(weight.dtype) if needs_weight_grad else None
        grad_bias = sums[0].to(weight.dtype, copy=True) if needs_weight_grad else None
        dist.all_reduce(sums, group=stats.group)
        mean_dy, mean_dy_xmu = sums / stats.count
        grad_z = (dy - mean_dy.view(shape) - xmu * (invstd * invstd * mean_dy_xmu).view(shape)) \
            * (invstd * weight.to(acc)).view(shape)
        return grad_z.to(z.dtype), grad_weight, grad_bias, None
