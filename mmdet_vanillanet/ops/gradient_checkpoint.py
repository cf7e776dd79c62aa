"""Gradient checkpointing of a stage (``with_cp``): the forward pass keeps only the stage's input,
and the backward pass runs the stage again to get what its own backward needs.

Written here rather than taken from ``torch.utils.checkpoint`` for BN's running statistics: a
recomputation runs the stage's BN layers in training mode once more, and with
torch.utils.checkpoint that updates their running statistics a second time per step (and counts
the step twice in ``num_batches_tracked``). Here the recomputation restores them afterwards, so
they are updated once, as without checkpointing. The first pass runs without autograd and only
the recomputation records a graph, with the lean ops where the forward pass would have run them
(``forced_plain``).
The stage's parameters are inputs of the op, so a stage whose input needs no gradient (after
frozen stages) still gets its parameters' gradients. A second-order gradient through it
(``create_graph=True``, a gradient penalty) is an error, whatever the loss, never a dropped term.
"""
import contextlib

import torch
import torch.nn as nn
from torch import Tensor
from torch.autograd import Function
from torch.nn.modules.batchnorm import _BatchNorm

from .autocast import autocast_as, autocast_state
from .lean_training import SECOND_ORDER, forced_plain, plain_if


class _Checkpoint(Function):

    @staticmethod
    def forward(ctx, x, stage, *params):
        ctx.stage = stage
        ctx.autocast, ctx.plain = autocast_state(x), forced_plain()
        ctx.save_for_backward(x)
        with torch.no_grad():
            return stage(x)

    @staticmethod
    def backward(ctx, grad_out):
        if torch.is_grad_enabled():  # create_graph=True
            raise RuntimeError(SECOND_ORDER)
        x, = ctx.saved_tensors
        x = x.detach().requires_grad_(ctx.needs_input_grad[0])
        params = list(ctx.stage.parameters())
        wanted = [x] * ctx.needs_input_grad[0] + [
            p for p, needed in zip(params, ctx.needs_input_grad[2:]) if needed]
        # Restored once the recomputed graph has run backward, which keeps (unread) the BN
        # buffers it saw.
        with _running_statistics_kept(ctx.stage):
            with torch.enable_grad(), autocast_as(ctx.autocast), plain_if(ctx.plain):
                out = ctx.stage(x)
            grads = iter(torch.autograd.grad(out, wanted, grad_out, allow_unused=True))
        grad_x = next(grads) if ctx.needs_input_grad[0] else None
        return (grad_x, None, *(next(grads) if needed else None
                                for needed in ctx.needs_input_grad[2:]))


@contextlib.contextmanager
def _running_statistics_kept(module: nn.Module):
    """The BN buffers of ``module`` as they were before the block, restored after it (those of
    the layers in training mode: the others are not updated)."""
    buffers = [buffer for m in module.modules() if isinstance(m, _BatchNorm) and m.training
               for buffer in m.buffers()]
    saved = [buffer.clone() for buffer in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in zip(buffers, saved):
                buffer.copy_(value)


def checkpoint_stage(stage: nn.Module, x: Tensor) -> Tensor:
    """``stage(x)``, keeping only x for backward (where a gradient is needed)."""
    params = tuple(stage.parameters())
    if not torch.is_grad_enabled() or not (x.requires_grad or any(p.requires_grad
                                                                   for p in params)):
        return stage(x)
    return _Checkpoint.apply(x, stage, *params)
