"""The lean training path: a VanillaNet training step keeps its conv outputs for backward and
recomputes the rest.

Plain autograd keeps, for each block, seven maps: the block's input (for conv1's weight
gradient), conv1's output (for its BN), that BN's output (for the leaky_relu and conv2), conv2's
output (for its BN), that BN's output and the argmax indices (for the max pool), the relu's
output (for the depthwise conv) and the depthwise conv's output (for its BN). All but two are
cheap functions of the two 1x1 convs' outputs, z1 and z2:

    x -conv1-> z1 -BN, leaky_relu-> a1 -conv2-> z2 -BN-> a2 -pool-> p -relu, dwconv-> z3 -BN-> y
               kept                             kept

The three ops below stand in for a (conv, BN, leaky_relu), a max pool and the series activation
(relu, depthwise conv, BN). Each output carries a *recipe*: the steps that recompute it from
tensors the ops keep anyway. An op whose backward needs its input keeps the input's recipe
instead of the input, so the next block's conv1 keeps z2 of this block, not y, and the series
activation recomputes relu(p) and z3 from z2 (its depthwise conv costs 81 multiply-adds per value
against the 1x1 convs' 512 to 4096). What a step keeps: z1 and z2 per block, per-channel
statistics and the weights, which the parameters hold anyway.

Exactness. The BN statistics are computed, and the running statistics updated, once, in the
forward pass (``batch_norm.forward``); a recomputation runs the same BN kernel on the same conv
output (``batch_norm.recompute``), so every recomputed map is the forward pass's, bit for bit,
and a max pool picks the same argmax. The forward pass is the plain path's, and the backward
formulas are PyTorch's own kernels (convolution, BN, leaky_relu, relu and max-pool backward), so
on the CPU the outputs, gradients and BN statistics are the plain path's bit for bit, but for
the depthwise weights' gradient, which ``depthwise.depthwise_weight_grad`` sums in another order
(tests/test_lean_training.py compares both paths). Under autocast the recomputation runs under
the forward pass's autocast state, so its dtypes are the forward pass's. The ops' backward
passes are not themselves differentiable: a second-order gradient through them (a gradient
penalty) is an error, not a wrong number; train such a model with ``lean_training=False``.

When a consumer recomputes an input in its backward, the steps leave what their own op's
backward needs (the pool's argmax, the activation's relu output and depthwise output) in the
step's cache, and that op, whose backward autograd runs next, takes it from there: each
depthwise conv is recomputed once per step.

The recipes hold their tensors weakly: a recipe is used only while the op that made it keeps its
tensors, which it does for as long as autograd keeps its node, and only while the map it
recomputes has not been changed in place. Where the ops do not apply (``applies``: no gradient
needed, a norm other than BN, a conv or norm with a forward hook or a forward of its own,
tracing or torch.compile), the modules run PyTorch's ops (``conv_norm_act``, ``pool`` and
``series_activation`` do both).
"""
import functools
import weakref
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import Function
from torch.autograd.function import once_differentiable
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.weak import WeakIdKeyDictionary

from . import batch_norm as bn
from .autocast import autocast_as, autocast_state
from .depthwise import depthwise_conv, depthwise_weight_grad

# An op's output -> (its recipe, a tuple of Steps from kept tensors to the output; the output's
# version when it was made).
_RECIPES = WeakIdKeyDictionary()


class Step:
    """One step of a recipe: ``fn(value, *tensors, cache=self.cache)``, where ``value`` is the
    previous step's result. ``cache`` receives what the op that made this step's output needs in
    its own backward, when a consumer recomputes the output first. ``before``: the steps
    before this one in its output's recipe (the op's input's recipe, or none where the op keeps
    the tensor this step starts from).

    For example, a max pool's output p = pool(BN(z)) has the recipe (BN step of the op that
    kept z, pool step); the series activation after it keeps that recipe's tensors, and in its
    backward recomputes BN(z), then p (the pool step leaves p's argmax in its cache, which the
    pool op's backward, next, takes), then relu(p) and the depthwise conv."""
    __slots__ = ('fn', 'refs', 'cache', 'before')

    def __init__(self):
        self.fn = None
        self.refs = ()
        self.cache = {}
        self.before = ()

    def set(self, fn, *tensors):
        self.fn = fn
        self.refs = tuple(weakref.ref(t) for t in tensors)


def _kept(_, tensor, cache):
    """The first step of a recipe whose source is a tensor some op keeps as it is."""
    return tensor


def _hooked(*modules: nn.Module) -> bool:
    """Whether a forward hook (the module's, or a global one) would see these modules' calls,
    which the lean ops do not make (feature recorders, weight_norm, pruning)."""
    return bool(nn.modules.module._global_forward_hooks
                or nn.modules.module._global_forward_pre_hooks
                or any(m._forward_hooks or m._forward_pre_hooks for m in modules))


def applies(x: Tensor, modules, *params: Tensor) -> bool:
    """Whether the lean ops run: where autograd would record the plain ones (a gradient is
    needed), on modules whose computation they reproduce (a plain nn.Conv2d, a BatchNorm they
    compute themselves; no subclass with its own forward, such as a QAT conv, and no forward
    hook), outside tracing and torch.compile (which see PyTorch's ops)."""
    return (torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params))
            and all(bn.supported(m) if isinstance(m, _BatchNorm) else
                    type(m) is nn.Conv2d and m.padding_mode == 'zeros' for m in modules)
            and not _hooked(*modules)
            and not torch.jit.is_tracing() and not torch.compiler.is_compiling())


# --- keeping and recomputing an op's input ------------------------------------------------

def _keep_input(ctx, x: Tensor) -> list:
    """The tensors an op keeps for its input: its recipe's (ctx.recipe), or x itself, where x
    has none, where a tensor of its recipe is gone, or where x was changed in place since it was
    made (the recipe would recompute the map before the change)."""
    recipe, version = _RECIPES.get(x, (None, None))
    tensors = [ref() for step in recipe for ref in step.refs] if recipe else []
    if recipe is None or x._version != version or any(t is None for t in tensors):
        recipe, tensors = (_kept_step(x), ), [x]
    ctx.recipe = recipe
    ctx.num_input_tensors = len(tensors)
    return tensors


def _kept_step(x: Tensor) -> Step:
    step = Step()
    step.set(_kept, x)
    return step


def _recompute(recipe, tensors) -> Tensor:
    value, i = None, 0
    for step in recipe:
        n = len(step.refs)
        value = step.fn(value, *tensors[i:i + n], cache=step.cache)
        i += n
    return value


def _split(ctx):
    saved = ctx.saved_tensors
    return saved[:ctx.num_input_tensors], saved[ctx.num_input_tensors:]


def _run(function, x: Tensor, *args) -> Tensor:
    """Apply the op and record its output's recipe (and the output's version, which an in-place
    change would raise)."""
    step = Step()
    out = function.apply(x, step, *args)
    if out.requires_grad:
        _RECIPES[out] = step.before + (step, ), out._version
    return out


# --- conv, BN, leaky_relu ---------------------------------------------------------------------

def _activate(out: Tensor, slope: Optional[float]) -> Tensor:
    return out if slope is None else F.leaky_relu_(out, slope)


def _norm_act_step(_, z, weight, bias, first, second, *, stats, slope, cache):
    return _activate(bn.recompute(z, weight, bias, stats._replace(first=first, second=second)),
                     slope)


def _stats_tensors(stats: bn.Stats):
    """Stats without its tensors (kept by save_for_backward), and the tensors."""
    return stats._replace(first=None, second=None), (stats.first, stats.second)


class _ConvNormAct(Function):
    """leaky_relu(BN(conv(x)), slope); keeps conv(x) and x's recipe."""

    @staticmethod
    def forward(ctx, x, step, conv: nn.Conv2d, norm, slope, weight, bias, norm_weight,
                norm_bias):
        z = F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
        out, stats = bn.forward(norm, z)
        out = _activate(out, slope)
        kept = _keep_input(ctx, x)
        ctx.stats, stats_tensors = _stats_tensors(stats)
        ctx.save_for_backward(*kept, weight, z, norm_weight, norm_bias, *stats_tensors)
        ctx.conv, ctx.slope, ctx.has_bias = conv, slope, bias is not None
        ctx.autocast, ctx.x_dtype = autocast_state(x), x.dtype
        step.set(functools.partial(_norm_act_step, stats=ctx.stats, slope=slope), z,
                 norm_weight, norm_bias, *stats_tensors)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        kept, (weight, z, norm_weight, norm_bias, first, second) = _split(ctx)
        stats = ctx.stats._replace(first=first, second=second)
        grad = grad_out
        if ctx.slope is not None:
            with autocast_as(ctx.autocast):
                before = bn.recompute(z, norm_weight, norm_bias, stats)
            grad = torch.ops.aten.leaky_relu_backward(grad_out, before, ctx.slope, False)
        grad_z, grad_norm_weight, grad_norm_bias = bn.backward(
            grad, z, norm_weight, stats, any(ctx.needs_input_grad[7:]))
        with autocast_as(ctx.autocast):
            x = _recompute(ctx.recipe, kept)
        conv = ctx.conv
        grad_x, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
            grad_z, x.to(z.dtype), weight.to(z.dtype), [weight.shape[0]] if ctx.has_bias else None,
            conv.stride, conv.padding, conv.dilation, False, [0, 0], conv.groups,
            [ctx.needs_input_grad[0], ctx.needs_input_grad[5], ctx.needs_input_grad[6]])
        return (_cast(grad_x, ctx.x_dtype), None, None, None, None,
                _cast(grad_weight, weight.dtype), _cast(grad_bias, weight.dtype),
                grad_norm_weight, grad_norm_bias)


def _cast(grad: Optional[Tensor], dtype) -> Optional[Tensor]:
    return None if grad is None else grad.to(dtype)


def conv_norm_act(x: Tensor, conv: nn.Conv2d, norm: nn.Module, slope: Optional[float] = None,
                  lean: bool = True) -> Tensor:
    """``leaky_relu(norm(conv(x)), slope)``; no activation where ``slope`` is None or 1 (the
    identity). ``lean``: keep only conv(x) for backward where the lean ops apply."""
    slope = None if slope is None or slope == 1 else float(slope)
    if lean and applies(x, (conv, norm), *conv.parameters(), *norm.parameters()):
        return _run(_ConvNormAct, x, conv, norm, slope, conv.weight, conv.bias, norm.weight,
                    norm.bias)
    out = norm(conv(x))
    return out if slope is None else F.leaky_relu(out, slope)


# --- max pool -------------------------------------------------------------------------------------

def _max_pool(x: Tensor, pool: Tuple[str, int], return_indices: bool = False):
    kind, size = pool
    function = F.max_pool2d if kind == 'max' else F.adaptive_max_pool2d
    return function(x, size, return_indices=return_indices)


def _pool_step(x, *, pool, cache):
    out, indices = _max_pool(x, pool, return_indices=True)
    cache['input'] = x, indices
    return out


class _Pool(Function):
    """A max pool (or adaptive max pool) that keeps its input's recipe, not the input and the
    argmax indices."""

    @staticmethod
    def forward(ctx, x, step, pool):
        out = _max_pool(x, pool)
        ctx.save_for_backward(*_keep_input(ctx, x))
        ctx.pool, ctx.step, ctx.autocast = pool, step, autocast_state(x)
        step.set(functools.partial(_pool_step, pool=pool))
        step.before = ctx.recipe
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        cached = ctx.step.cache.pop('input', None)
        if cached is None:
            with autocast_as(ctx.autocast):
                x = _recompute(ctx.recipe, ctx.saved_tensors)
            cached = x, _max_pool(x, ctx.pool, return_indices=True)[1]
        x, indices = cached
        kind, size = ctx.pool
        if kind == 'max':
            grad = torch.ops.aten.max_pool2d_with_indices_backward(
                grad_out, x, [size, size], [size, size], [0, 0], [1, 1], False, indices)
        else:
            grad = torch.ops.aten.adaptive_max_pool2d_backward(grad_out, x, indices)
        return grad, None, None


def pool(x: Tensor, kind: str, size: int, lean: bool = True) -> Tensor:
    """``kind`` 'max': a max pool of kernel and stride ``size``; 'adaptive': an adaptive max pool
    to ``size`` x ``size``."""
    if lean and applies(x, ()):
        return _run(_Pool, x, (kind, size))
    return _max_pool(x, (kind, size))


# --- the series activation ---------------------------------------------------------------------

def _activation_step(x, weight, norm_weight, norm_bias, first, second, *, stats, cache):
    relu = F.relu(x)
    z = depthwise_conv(relu, weight)
    cache['relu_conv'] = relu, z
    return bn.recompute(z, norm_weight, norm_bias, stats._replace(first=first, second=second))


class _SeriesActivation(Function):
    """BN(dwconv(relu(x))); keeps x's recipe (the kept conv output before it), not relu(x) and
    the depthwise conv's output, which its backward recomputes."""

    @staticmethod
    def forward(ctx, x, step, norm, weight, norm_weight, norm_bias):
        z = depthwise_conv(F.relu(x), weight)
        out, stats = bn.forward(norm, z)
        kept = _keep_input(ctx, x)
        ctx.stats, stats_tensors = _stats_tensors(stats)
        ctx.save_for_backward(*kept, weight, norm_weight, *stats_tensors)
        ctx.step, ctx.autocast = step, autocast_state(x)
        step.set(functools.partial(_activation_step, stats=ctx.stats), weight, norm_weight,
                 norm_bias, *stats_tensors)
        step.before = ctx.recipe
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        kept, (weight, norm_weight, first, second) = _split(ctx)
        cached = ctx.step.cache.pop('relu_conv', None)
        if cached is None:
            with autocast_as(ctx.autocast):
                relu = F.relu(_recompute(ctx.recipe, kept))
                cached = relu, depthwise_conv(relu, weight)
        relu, z = cached
        stats = ctx.stats._replace(first=first, second=second)
        grad_z, grad_norm_weight, grad_norm_bias = bn.backward(
            grad_out, z, norm_weight, stats, any(ctx.needs_input_grad[4:]))
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_relu = torch.ops.aten.convolution_backward(
                grad_z, relu, weight.to(relu.dtype), None, [1, 1], [weight.shape[-1] // 2] * 2,
                [1, 1], False, [0, 0], weight.shape[0], [True, False, False])[0]
            grad_x = torch.ops.aten.threshold_backward(grad_relu, relu, 0)
        if ctx.needs_input_grad[3]:
            grad_weight = depthwise_weight_grad(grad_z, relu, weight).to(weight.dtype)
        return grad_x, None, None, grad_weight, grad_norm_weight, grad_norm_bias


def series_activation(x: Tensor, weight: Tensor, norm: nn.Module, lean: bool = True) -> Tensor:
    """``norm(dwconv(relu(x)))``, the training form of the series activation."""
    if lean and applies(x, (norm, ), weight, *norm.parameters()):
        return _run(_SeriesActivation, x, norm, weight, norm.weight, norm.bias)
    return norm(depthwise_conv(F.relu(x), weight))
