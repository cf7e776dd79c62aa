"""How the deployed series activation runs: ``fused_activation`` computes
dwconv(relu(max_pool(x))) + b either with PyTorch's ops or with the Triton kernel
(``triton_activation``), as ``act_impl`` asks: 'torch' (PyTorch ops), 'triton' (the kernel, an
error where it cannot run), 'auto' (the kernel where it can run on a CUDA tensor, PyTorch
elsewhere). Both compute the same function; the model (``models.series_activation``) does not
know which ran.

The guard. CI runs the kernel in Triton's interpreter and builds it for real cards, but only a
card runs the code its compiler made. So the first launch of each compiled binary (a variant:
kernel size, pool, dtypes, device, tile and launch options; in each of Triton's specialisations)
in a process is compared with float64 PyTorch on windows of that call's own output: the first
and last tile boundaries of both axes (the padding, the edge masks, partial tiles), on the
first, middle and last channel planes (``check_against_torch``). A binary that fails to build or
launch, or differs beyond ``CHECK_TOLERANCE``, marks its variant failed for the rest of the
process: under 'auto' one warning names the variant and the failure and PyTorch computes that
call and every later one of the variant; under 'triton' every call of the variant is a one-line
ConfigError. ``kernel_checks()`` reports what was found. A check needs a host synchronisation, so
it cannot run while torch.compile traces the model or a CUDA graph is captured: there a variant
not yet checked runs PyTorch ('auto') or is an error ('triton'), and a variant that passed runs
its new specialisations unchecked.

Timing. With ``torch.backends.cudnn.benchmark`` on (MMDetection's ``env_cfg.cudnn_benchmark``),
'auto' also times the kernel and PyTorch on the first call of each input shape of a variant and
keeps the faster, as cuDNN then does for its convolution algorithms. It is off by default for
the reasons cuDNN's is: which implementation runs then depends on timing noise (fp16 results
differ between them in the last bits), every new shape (a detector sees many) pays for the
timing, and nothing can be timed in a graph being traced or captured.
"""
import functools
import os
import time
import warnings
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

from ..config_error import ConfigError
from .depthwise import relu_dwconv

ACT_IMPLS = ('auto', 'triton', 'torch')
# Relative L2 error against float64 PyTorch above which a kernel variant fails its check. The
# output is rounded to the input's type: 4 to 5 times the unit roundoff of fp16 and bf16. fp32
# runs as tf32x3 (about 1e-6); a kernel multiplying in plain tf32 (1e-4 to 1e-3) fails.
CHECK_TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}
TIMING_REPEATS = 3


def check_act_impl(value) -> str:
    if value not in ACT_IMPLS:
        raise ConfigError(f'act_impl={value!r}: choose one of {list(ACT_IMPLS)} (auto: the '
                         f'Triton kernel for CUDA tensors where it runs, else PyTorch)')
    return value


@functools.lru_cache(maxsize=None)
def triton_kernel():
    """(the kernel's module, None) or (None, why Triton cannot be used).

    Imported on first use, not with the model: Triton is optional, and CPU-only users and the
    training path never need it.
    """
    try:
        from . import triton_activation
    except ImportError as err:
        return None, f'Triton does not import ({err}); pip install triton'
    return triton_activation, None


def torch_activation(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                     pool: int) -> torch.Tensor:
    """The kernel's function in PyTorch ops: dwconv(relu(max_pool(x))) + bias."""
    if pool > 1:
        x = F.max_pool2d(x, pool)
    return relu_dwconv(x, weight, bias)


class Variant(NamedTuple):
    """What selects one compiled kernel (up to Triton's specialisations on sizes and pointers)."""
    k: int
    pool: int
    dtype: torch.dtype
    weight_dtype: torch.dtype
    device: torch.device
    config: tuple  # triton_activation.Config

    def __str__(self):
        return (f'k={self.k} pool={self.pool} {_name(self.dtype)} (weights '
                f'{_name(self.weight_dtype)}) on {self.device}, tile {self.config.block_h}x'
                f'{self.config.block_w} with {self.config.num_warps} warps')


def _name(dtype: torch.dtype) -> str:
    return str(dtype).replace('torch.', '')


class _Record:
    """What the guard found for one variant in this process."""

    def __init__(self):
        self.checked = {}  # compiled binary (None under the interpreter) -> relative error
        self.failure = None  # why the variant fails, once it has
        self.timings = {}  # input shape -> dict(triton_ms, torch_ms), under cudnn.benchmark


# Filled by the first call of each variant (never on import); read by kernel_checks().
_RECORDS = {}


def kernel_checks() -> dict:
    """What the guard found in this process, per kernel variant that ran (JSON-able): for a
    benchmark's report, so that its figures say whether the kernel they timed was checked."""
    return {str(v): dict(
        k=v.k, pool=v.pool, dtype=_name(v.dtype), weight_dtype=_name(v.weight_dtype),
        device=str(v.device), config=v.config._asdict(), passed=bool(r.checked) and not r.failure,
        checked_binaries=len(r.checked), max_rel_err=max(r.checked.values(), default=None),
        tolerance=CHECK_TOLERANCE[v.dtype], failure=r.failure,
        timings={'x'.join(map(str, s)): t for s, t in r.timings.items()})
        for v, r in _RECORDS.items()}


def _edges(size: int, block: int):
    """The first and the last ``block + 1`` positions of an axis: each spans a tile boundary
    where the axis has one, and holds the map's edge (padding, masks, a partial tile)."""
    span = min(size, block + 1)
    return (0, span), (size - span, size)


def check_against_torch(x, weight, bias, pool: int, y, config) -> Optional[float]:
    """Relative L2 error of the kernel's output ``y`` against float64 PyTorch (rounded to y's
    type) on windows of this call: the first and last tile boundaries of both axes, on the
    first, middle and last channel planes. None when a compared value is not finite: a NaN or
    an infinity in the input spreads differently through the kernel (its module docstring)."""
    n, c, h, w = y.shape
    pad = weight.shape[-1] // 2
    planes = torch.tensor(sorted({0, n * c // 2, n * c - 1}), device=x.device)
    x_planes, y_planes = x.flatten(0, 1), y.flatten(0, 1)
    weights = weight.index_select(0, planes % c).to(x.dtype).double()
    biases = bias.index_select(0, planes % c).double()
    got, expected = [], []
    for (r0, r1), (c0, c1) in zip(_edges(h, config.block_h), _edges(w, config.block_w)):
        # The input the window's outputs read; where it stops inside the map, the outputs
        # that would see the reference's zero padding there are cut off again.
        lo_r, hi_r, lo_c, hi_c = max(0, r0 - pad), min(h, r1 + pad), max(0, c0 - pad), \
            min(w, c1 + pad)
        window = x_planes[:, lo_r * pool:hi_r * pool, lo_c * pool:hi_c * pool]
        ref = torch_activation(window.index_select(0, planes)[None].double(), weights, biases,
                               pool)
        expected.append(ref[..., r0 - lo_r:r1 - lo_r, c0 - lo_c:c1 - lo_c].to(y.dtype).flatten())
        got.append(y_planes[:, r0:r1, c0:c1].index_select(0, planes).flatten())
    expected, got = torch.cat(expected).double(), torch.cat(got).double()
    # One host synchronisation for the three numbers.
    finite, err, norm = torch.stack([expected.isfinite().all().double(),
                                     (got - expected).norm(), expected.norm()]).tolist()
    if not finite:
        return None
    return err / norm if norm > 0 else (0. if err == 0 else float('inf'))


def _device_why_not(x: torch.Tensor, act_impl: str) -> Optional[str]:
    """Why the kernel cannot run on x's device (None: it can)."""
    interpreted = os.environ.get('TRITON_INTERPRET') == '1'
    if x.device.type != 'cuda' and (act_impl == 'auto' or not interpreted):
        return (f'the input is on {x.device.type}; the kernel runs on CUDA devices (on the CPU '
                f'only under TRITON_INTERPRET=1, for tests)')
    if x.device.type == 'cuda' and (torch.version.hip is not None
                                    or torch.cuda.get_device_capability(x.device) < (8, 0)):
        return (f'{torch.cuda.get_device_name(x.device)} is not an NVIDIA GPU of compute '
                f'capability 8.0 or newer, which the kernel needs (tf32, bf16)')
    return None


def _graph_being_built(x: torch.Tensor) -> Optional[str]:
    """Why nothing can be compared or timed now (a host synchronisation would break it)."""
    if torch.compiler.is_compiling():
        return 'while torch.compile traces the model'
    if x.is_cuda and torch.cuda.is_current_stream_capturing():
        return 'during CUDA graph capture'
    return None


def _time_ms(fn, device: torch.device):
    """(mean ms of ``fn`` over TIMING_REPEATS calls after one warm-up call, its result)."""
    fn()  # the kernel's compile, cuDNN's own search for a new shape
    sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda device: None)
    sync(device)
    start = time.perf_counter()
    for _ in range(TIMING_REPEATS):
        out = fn()
    sync(device)
    return (time.perf_counter() - start) * 1e3 / TIMING_REPEATS, out


def fused_activation(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, pool: int,
                     act_impl: str) -> torch.Tensor:
    """dwconv(relu(max_pool2d(x, pool))) + bias (``pool=1``: no pool), by the implementation
    ``act_impl`` chooses."""
    if act_impl != 'torch':
        variant, why_not = _variant_for(x, weight, pool, act_impl)
        if variant is not None:
            if torch.is_autocast_enabled(x.device.type):
                x = x.to(variant.dtype)
            y = _run_kernel(variant, x, weight, bias, pool, act_impl)
            if y is not None:
                return y
        elif act_impl == 'triton':
            raise ConfigError(f"act_impl='triton' cannot run here: {why_not}; use "
                             f"act_impl='auto' to fall back to PyTorch")
    return torch_activation(x, weight, bias, pool)


def implementation_for(x: torch.Tensor, weight: torch.Tensor, pool: int, act_impl: str) -> str:
    """What a call on ``x`` runs: 'triton', or 'torch (why not the kernel)'. A variant's first
    call compares the kernel with PyTorch (``kernel_checks()``)."""
    if act_impl == 'torch':
        return 'torch'
    variant, why_not = _variant_for(x, weight, pool, act_impl)
    return 'triton' if variant is not None else f'torch ({why_not})'


def _variant_for(x: torch.Tensor, weight: torch.Tensor, pool: int, act_impl: str):
    """(the kernel variant that would compute this call, None), or (None, why none)."""
    why_not = _device_why_not(x, act_impl)
    if why_not:
        return None, why_not
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return None, ('a traced or exported graph would not record a Triton kernel; trace '
                      "or export with act_impl='torch'")
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return None, ('it has no backward pass; run inference under torch.no_grad() or '
                      'torch.inference_mode()')
    dtype = (torch.get_autocast_dtype(x.device.type)
             if torch.is_autocast_enabled(x.device.type) else x.dtype)
    if x.dim() != 4 or not x.is_contiguous():
        return None, (f'it takes contiguous NCHW maps, got a {x.dim()}-d tensor'
                      + ('' if x.is_contiguous() else ' in another memory format'))
    kernels, why_not = triton_kernel()
    if kernels is None:
        return None, why_not
    k = weight.shape[-1]
    why_not = kernels.why_not(dtype, k, pool)
    if why_not:
        return None, why_not
    variant = Variant(k, pool, dtype, weight.dtype, x.device, kernels.config_for(dtype, pool))
    record = _RECORDS.get(variant)
    if record is not None and record.failure:
        return None, f'the kernel {variant} {record.failure}'
    if record is None or not record.checked:
        building = _graph_being_built(x)
        if building:
            return None, (f'the first call of the kernel {variant} is compared with '
                          f'PyTorch, which cannot be done {building}; make one call '
                          f'before')
    timing = (record.timings.get(tuple(x.shape))
              if act_impl == 'auto' and record is not None and record.timings else None)
    if timing and timing['torch_ms'] < timing['triton_ms']:
        return None, (f'PyTorch timed faster on this shape ({timing["torch_ms"]:.3g} ms, '
                      f'the kernel {timing["triton_ms"]:.3g} ms; cudnn.benchmark is on)')
    return variant, None


def _run_kernel(variant: Variant, x, weight, bias, pool: int, act_impl: str):
    """The kernel's result, or None where PyTorch must compute this call instead."""
    kernels = triton_kernel()[0]
    record = _RECORDS.setdefault(variant, _Record())
    try:
        y, binary = kernels.launch(x, weight, bias, pool)
    except kernels.KernelLaunchError as err:
        return _fail(variant, record, f'did not build or launch ({err})', act_impl)
    # An empty output launched nothing and has nothing to compare.
    if y.numel() and binary not in record.checked and not _graph_being_built(x):
        err = check_against_torch(x, weight, bias, pool, y, variant.config)
        if err is None:
            return None  # a non-finite input: PyTorch's result, and the next call checks
        tolerance = CHECK_TOLERANCE[variant.dtype]
        if not err <= tolerance:
            return _fail(variant, record, f'differs from PyTorch on its first call '
                                          f'(relative error {err:.2g} > {tolerance:g})', act_impl)
        record.checked[binary] = err
    if (act_impl == 'auto' and torch.backends.cudnn.benchmark
            and tuple(x.shape) not in record.timings and not _graph_being_built(x)):
        triton_ms, y = _time_ms(lambda: kernels.fused_series_activation(x, weight, bias, pool),
                                x.device)
        torch_ms, expected = _time_ms(lambda: torch_activation(x, weight, bias, pool),
                                      x.device)
        record.timings[tuple(x.shape)] = dict(triton_ms=triton_ms, torch_ms=torch_ms)
        return y if triton_ms <= torch_ms else expected
    return y


def _fail(variant: Variant, record: _Record, failure: str, act_impl: str):
    """Marks the variant failed, which happens once per variant: a ConfigError under
    'triton', a warning under 'auto' (and PyTorch from then on)."""
    record.failure = failure
    if act_impl == 'triton':
        raise ConfigError(f"act_impl='triton': the kernel {variant} {failure}; use "
                         f"act_impl='auto' to fall back to PyTorch")
    warnings.warn(f'the Triton activation kernel {variant} {failure}; PyTorch computes '
                  f'this variant for the rest of the process')
    return None
