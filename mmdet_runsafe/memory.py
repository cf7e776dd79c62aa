"""Whether a network's run at a given input size fits in this machine's memory, estimated before
the run: an input too large (``--shape 100000 100000``) was killed by the kernel, or swapped for
minutes, instead of a one-line refusal.

A fully convolutional network's activations grow with the input's pixels: the estimate runs the
module once on a small probe input, sums the bytes of every leaf module's output (what an eager
forward or a trace can hold at once, at most) and scales that by the pixels and batch of each
input. It is an upper bound of the forward pass's activations, not of the weights (already in
memory) or of onnxruntime's own arena, which holds about as much again."""
import os.path as osp
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .errors import Argument, InputError

GIB = 1024 ** 3


def available_memory() -> Optional[int]:
    """Bytes the kernel can give without swapping (Linux's MemAvailable), or None elsewhere."""
    if not osp.isfile('/proc/meminfo'):
        return None
    with open('/proc/meminfo') as f:
        for line in f:
            if line.startswith('MemAvailable:'):
                return int(line.split()[1]) * 1024
    return None


@torch.no_grad()
def activation_bytes(module: nn.Module, shape: Tuple[int, ...], probe_side: int) -> float:
    """The estimated bytes of ``module``'s leaf outputs for an NCHW input of ``shape``, scaled
    from one probe input of probe_side x probe_side."""
    total = 0

    def count(_, __, output):
        nonlocal total
        for t in output if isinstance(output, (tuple, list)) else (output, ):
            if torch.is_tensor(t):
                total += t.numel() * t.element_size()

    leaves = [m for m in module.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(count) for m in leaves]
    try:
        module(torch.zeros(1, shape[1], probe_side, probe_side))
    finally:
        for hook in hooks:
            hook.remove()
    n, c, h, w = shape
    return (total + c * probe_side ** 2 * 4) * n * h * w / probe_side ** 2


def check_memory(module: nn.Module, shapes: Sequence[Tuple[int, ...]], argument: Argument,
                 probe_side: int):
    """Refuse (InputError) when the largest of ``shapes`` would need more memory than is
    available; ``argument`` is the one that asks for the size (named in the message),
    ``probe_side`` a size the module takes (at least its minimum input side)."""
    available = available_memory()
    if available is None:
        return
    needed = max(activation_bytes(module, shape, probe_side) for shape in shapes)
    if needed > available:
        raise InputError(argument, f': the network\'s activations alone would need about '
                         f'{needed / GIB:,.0f} GiB of memory, and {available / GIB:,.1f} GiB are '
                         f'available; give a smaller size')
