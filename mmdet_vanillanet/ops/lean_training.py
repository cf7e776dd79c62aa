"""The lean training path: a VanillaNet training step keeps its conv outputs for backward and
recomputes the rest.

What a step keeps. Plain autograd keeps, per block, seven maps: the block's input (for conv1's
weight gradient), conv1's output (for its BN), that BN's output (for the leaky_relu and conv2),
conv2's output (for its BN), that BN's output and the argmax indices (for the max pool), the
relu's output (for the depthwise conv) and the depthwise conv's output (for its BN). The lean
ops keep two, the 1x1 convs' outputs z1 and z2, and recompute the others from them:

    x -conv1-> z1 -BN, leaky_relu-> a1 -conv2-> z2 -BN-> a2 -pool-> p -relu, dwconv, BN-> y
               kept                             kept

that is, per step: the input image, the output of each 1x1 conv and of the stem's conv,
per-channel statistics, and the weights (which the parameters hold anyway). Each block's input x
is the previous block's y, recomputed from that block's z2 (its depthwise conv costs 81
multiply-adds per value against the 1x1 convs' 512 to 4096).

How. Each op (``conv_norm_act``: conv, BN, leaky_relu; ``pool``; ``series_activation``: relu,
depthwise conv, BN) is one autograd Function, ``_Lean``, around the op's plain function
(``norm_act``, ``max_pool``, ``series``), which the plain path calls too. Its forward pass runs
that function without recording a graph and keeps the conv's output (an op without a conv keeps
none), and for its input, where another lean op made it (the input's ``grad_fn``, unchanged
since), a reference to that op's node; else the input itself. Its backward pass recomputes its
output, from the kept conv output or from its input recomputed by the node before it, with the
same function, this time under autograd, which then differentiates it; the conv's backward is
PyTorch's kernel on the recomputed input (``_recomputed``). A node's recomputation is made once
per backward pass: the node after it (whose backward runs first and needs it as its input) or
the node itself makes it, and the node's own backward pass uses it and lets it go. A conv's
input is recomputed only in the conv's own backward (its output needs only the kept conv
output), so the recomputations alive at once are those of one block, never a chain back to the
stem. So every BN, pool and depthwise conv runs twice per step, once in the forward pass and once
recomputed.

Exactness. The BN statistics are computed, and the running statistics updated, once, in the
forward pass (``batch_norm.forward``); the recomputation runs the same BN kernel on the same conv
output (``batch_norm.recompute``), so every recomputed map is the forward pass's, bit for bit,
and a max pool picks the same argmax. The forward pass is the plain path's, and the backward
formulas are PyTorch's own (autograd's, on the recomputed graph), so on the CPU the outputs,
gradients and BN statistics are the plain path's bit for bit, but for the depthwise weights'
gradient, which ``depthwise.DepthwiseConv`` sums in another order (tests/test_lean_training.py
compares both paths). Under autocast the recomputation runs under the forward pass's autocast
state, so its dtypes are the forward pass's.

Where it runs. Only where that proof holds; elsewhere the modules run the plain path
(``applies``, ``hooked``): a gradient is needed; the batch is not empty; the modules are the
ones the ops reproduce (a plain nn.Conv2d, a BN or SyncBN computed by ``batch_norm``; no subclass
with a forward of its own, no other norm); no hook can see or change what the ops do (no forward
or backward hook, pre or post, on the backbone or any module in it, nor a global one: the ops
call no module, and a hook changing a map through ``.data`` would not be seen by its
recomputation); not while tracing or compiling (which see PyTorch's ops). Saved-tensor hooks
see what the ops keep (the saved-bytes count, torch.utils.checkpoint, which recomputes the ops
themselves). The ops are differentiable once: a second-order gradient (``create_graph=True``)
through them is an error, whatever the loss (``SECOND_ORDER``), never a dropped term.
"""
import contextlib
import contextvars
import functools
from typing import Callable, NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import Function
from torch.nn.modules import module as module_hooks
from torch.nn.modules.batchnorm import _BatchNorm

from . import batch_norm as bn
from .autocast import autocast_as, autocast_state
from .depthwise import DepthwiseConv, depthwise_conv, relu_dwconv

SECOND_ORDER = ("a second-order gradient (create_graph=True) through VanillaNet's lean training "
                "ops or with_cp, which are differentiable once: build the backbone with "
                "lean_training=False (and with_cp=False) to take it")

# --- the ops' math, written once: the plain path, the lean forward pass and its recomputation ---


def norm_act(z: Tensor, norm: Callable, slope: Optional[float]) -> Tensor:
    """leaky_relu(norm(z), slope); no activation where ``slope`` is None (the identity). In
    place where no graph is recorded (the lean forward pass, inference): the same values."""
    out = norm(z)
    return out if slope is None else F.leaky_relu(out, slope, inplace=not torch.is_grad_enabled())


def max_pool(x: Tensor, kind: str, size: int) -> Tensor:
    """'max': a max pool of kernel and stride ``size``; 'adaptive': an adaptive max pool to
    ``size`` x ``size``."""
    return F.max_pool2d(x, size) if kind == 'max' else F.adaptive_max_pool2d(x, size)


def series(x: Tensor, norm: Callable, weight: Tensor, conv: Callable = depthwise_conv) -> Tensor:
    """The training form of the series activation: norm(dwconv(relu(x)))."""
    return norm(relu_dwconv(x, weight, conv=conv))


# --- where the lean ops run --------------------------------------------------------------------

# True within a forward pass of a model on which hooked() holds.
_PLAIN = contextvars.ContextVar('lean_training_plain', default=False)

_GLOBAL_HOOKS = ('_global_forward_hooks', '_global_forward_pre_hooks', '_global_backward_hooks',
                 '_global_backward_pre_hooks')
_HOOKS = ('_forward_hooks', '_forward_pre_hooks', '_backward_hooks', '_backward_pre_hooks')


def hooked(model: nn.Module) -> bool:
    """Whether a module hook (forward or backward, pre or post; global, or on ``model`` or a
    module in it) could see or change the maps the ops compute: module calls the ops do not make,
    gradients they do not pass through modules, an output changed through ``.data`` that a
    recomputation would not see."""
    return _has_hooks(model.modules())


def _has_hooks(modules) -> bool:
    return (any(getattr(module_hooks, name) for name in _GLOBAL_HOOKS)
            or any(getattr(m, name) for m in modules for name in _HOOKS))


@contextlib.contextmanager
def plain_if(condition: bool):
    """Within: every op runs the plain path where ``condition`` holds (a model's forward pass,
    with ``hooked(model)``)."""
    token = _PLAIN.set(_PLAIN.get() or bool(condition))
    try:
        yield
    finally:
        _PLAIN.reset(token)


def forced_plain() -> bool:
    """Whether ``plain_if`` is in effect (for a recomputation that must decide as the forward
    pass did: ops.gradient_checkpoint)."""
    return _PLAIN.get()


def applies(x: Tensor, modules, *params: Tensor) -> bool:
    """Whether the lean ops run on ``x`` for these modules (module docstring: where it runs)."""
    return (not torch.compiler.is_compiling() and not torch.jit.is_tracing()
            and torch.is_grad_enabled() and not _PLAIN.get() and x.numel() > 0
            and (x.requires_grad or any(p.requires_grad for p in params))
            and all(bn.supported(m) if isinstance(m, _BatchNorm) else
                    type(m) is nn.Conv2d and m.padding_mode == 'zeros' for m in modules)
            and not _has_hooks(modules))


# --- the lean Function -------------------------------------------------------------------------


class _Op(NamedTuple):
    """A lean op: ``tail(z, [norm,] *extra)``, the plain function after the op's conv (or from
    its input, without one). Its Function's parameters: the conv's weight and bias, the norm's
    weight and bias, then ``extra``."""
    conv: Optional[nn.Conv2d]
    norm: Optional[_BatchNorm]
    tail: Callable

    def split(self, params):
        n_conv = 2 if self.conv is not None else 0
        n_norm = 2 if self.norm is not None else 0
        return params[:n_conv], params[n_conv:n_conv + n_norm], params[n_conv + n_norm:]

    def run_tail(self, z: Tensor, norm: Optional[Callable], extra) -> Tensor:
        return self.tail(z, *(() if norm is None else (norm, )), *extra)


class _Recording:
    """The op's BN in its forward pass: the layer's output, the running statistics updated once,
    and the statistics recorded for the recomputation."""

    def __init__(self, norm: _BatchNorm):
        self.norm, self.stats = norm, None

    def __call__(self, z: Tensor) -> Tensor:
        out, self.stats = bn.forward(self.norm, z)
        return out


class _Recomputed(NamedTuple):
    x: Optional[Tensor]  # the op's input, where kept (a conv's, recomputed: in its backward)
    z: Tensor  # the tail's input, a leaf
    out: Tensor  # the op's output, with its graph from z and the tail's parameters
    params: tuple  # the op's parameters as saved (the conv's used as they are)
    leaves: tuple  # the norm's and extra parameters, as leaves of the graph


class _Lean(Function):
    """``op``'s output; keeps the conv's output and the input's maker (or the input)."""

    @staticmethod
    def forward(ctx, x, op: _Op, *params):
        conv_params, norm_params, extra = op.split(params)
        ctx.op, ctx.source, ctx.recomputed = op, _lean_node(x), None
        ctx.autocast, ctx.x_dtype = autocast_state(x), x.dtype
        conv = op.conv
        z = x if conv is None else F.conv2d(x, *conv_params, conv.stride, conv.padding,
                                            conv.dilation, conv.groups)
        norm = None if op.norm is None else _Recording(op.norm)
        out = op.run_tail(z, norm, extra)
        ctx.stats = None if norm is None else norm.stats._replace(first=None, second=None)
        stats_tensors = () if norm is None else (norm.stats.first, norm.stats.second)
        kept = (x, ) if ctx.source is None else ()
        ctx.num_kept, ctx.num_params = len(kept) + (conv is not None), len(params)
        ctx.save_for_backward(*kept, *((z, ) if conv is not None else ()), *params,
                              *stats_tensors)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        if torch.is_grad_enabled():  # create_graph=True, whatever the loss's order
            raise RuntimeError(SECOND_ORDER)
        r = _recomputed(ctx)
        ctx.recomputed = None
        wanted = [r.z] + [leaf for leaf in r.leaves if leaf.requires_grad]
        grads = iter(torch.autograd.grad(r.out, wanted, grad_out, allow_unused=True))
        grad_z = next(grads)
        leaf_grads = [next(grads) if leaf.requires_grad else None for leaf in r.leaves]
        conv = ctx.op.conv
        if conv is None:
            return (grad_z, None, *leaf_grads)
        (weight, bias), x = r.params[:2], r.x
        del r, wanted  # the recomputed maps go before the conv's input is recomputed
        if x is None:
            x = _recomputed(ctx.source).out.detach()
        grad_x, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
            grad_z, x.to(grad_z.dtype), weight.to(grad_z.dtype),
            None if bias is None else [weight.shape[0]], conv.stride, conv.padding,
            conv.dilation, False, [0, 0], conv.groups, list(ctx.needs_input_grad[0:1])
            + list(ctx.needs_input_grad[2:4]))
        return (_cast(grad_x, ctx.x_dtype), None, _cast(grad_weight, weight.dtype),
                _cast(grad_bias, weight.dtype), *leaf_grads)


def _cast(grad: Optional[Tensor], dtype) -> Optional[Tensor]:
    return None if grad is None else grad.to(dtype)


def _lean_node(x: Tensor):
    """The node of the lean op that made x, where x is that op's output unchanged since."""
    node = x.grad_fn
    if type(node) is _Lean._backward_cls and node.out_version == x._version:
        return node
    return None


def _recomputed(node) -> _Recomputed:
    """``node``'s output recomputed with its graph, made once per backward pass (the node's
    saved tensors are read once: torch.utils.checkpoint allows no more)."""
    graph_task = torch._C._current_graph_task_id()
    if node.recomputed is not None and node.recomputed[0] == graph_task:
        return node.recomputed[1]
    saved = node.saved_tensors
    kept, params = saved[:node.num_kept], saved[node.num_kept:node.num_kept + node.num_params]
    stats_tensors = saved[node.num_kept + node.num_params:]
    op = node.op
    if op.conv is not None:  # from the kept conv output; the conv's input waits for its backward
        x, z = kept[0] if node.source is None else None, kept[-1]
    else:
        x = z = kept[0] if node.source is None else _recomputed(node.source).out.detach()
    _, norm_params, extra = op.split(params)
    n_conv = len(params) - len(norm_params) - len(extra)
    leaves = tuple(p.detach().requires_grad_(node.needs_input_grad[2 + n_conv + i])
                   for i, p in enumerate(norm_params + extra))
    with torch.enable_grad(), autocast_as(node.autocast):
        z = z.detach().requires_grad_()
        norm = None
        if op.norm is not None:
            first, second = stats_tensors
            norm = functools.partial(bn.recompute, weight=leaves[0], bias=leaves[1],
                                     stats=node.stats._replace(first=first, second=second))
        out = op.run_tail(z, norm, leaves[len(norm_params):])
    result = _Recomputed(x, z, out, params, leaves)
    node.recomputed = graph_task, result
    return result


def _run(x: Tensor, op: _Op, *params) -> Tensor:
    out = _Lean.apply(x, op, *params)
    out.grad_fn.out_version = out._version  # an in-place change after this makes x its own
    return out


# --- the ops the modules call ----------------------------------------------------------------


def conv_norm_act(x: Tensor, conv: nn.Conv2d, norm: nn.Module, slope: Optional[float] = None,
                  lean: bool = True) -> Tensor:
    """``leaky_relu(norm(conv(x)), slope)``; no activation where ``slope`` is None or 1 (the
    identity). ``lean``: keep only conv(x) for backward where the lean ops apply."""
    slope = None if slope is None or slope == 1 else float(slope)
    if lean and applies(x, (conv, norm), *conv.parameters(), *norm.parameters()):
        return _run(x, _Op(conv, norm, functools.partial(norm_act, slope=slope)), conv.weight,
                    conv.bias, norm.weight, norm.bias)
    return norm_act(conv(x), norm, slope)


def pool(x: Tensor, kind: str, size: int, lean: bool = True) -> Tensor:
    """``max_pool(x, kind, size)``, keeping nothing for backward where the lean ops apply."""
    if lean and applies(x, ()):
        return _run(x, _Op(None, None, functools.partial(max_pool, kind=kind, size=size)))
    return max_pool(x, kind, size)


def series_activation(x: Tensor, weight: Tensor, norm: nn.Module, lean: bool = True) -> Tensor:
    """``norm(dwconv(relu(x)))``, the training form of the series activation, keeping nothing
    for backward where the lean ops apply."""
    if lean and applies(x, (norm, ), weight, *norm.parameters()):
        return _run(x, _Op(None, norm, functools.partial(series, conv=DepthwiseConv.apply)),
                    norm.weight, norm.bias, weight)
    return series(x, norm, weight)
