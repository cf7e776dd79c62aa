"""The deployed series activation as one Triton kernel: y = dwconv_kxk(relu(maxpool_s(x))) + b.

cuDNN has no fast kernel for a 9x9 depthwise convolution, so on a GPU the deployed VanillaNet
spent most of its time here (benchmarks/results/gpu_backbones_h100_pytorch_activation.md).
This kernel reads each map once and writes the result once; the max pool of a downsampling
block is applied as the map is read (pool and relu commute), so the pooled map is never
written.

Design. One program computes a BLOCK_H x BLOCK_W tile of one channel plane. For each of the k
kernel columns j it loads the relu'd (and pooled) input rows the tile needs, shifted by j, as one
ROWS_IN x BLOCK_W tile X_j, and adds the banded matrix product S_j @ X_j, where
S_j[t, r] = w[r - t, j] (zero off the band 0 <= r - t < k). The products run on the tensor
cores, and a tile loads k * (BLOCK_H + k - 1) / BLOCK_H inputs per output (13.5 for k = 9)
instead of the k * k of a direct convolution, which would make the kernel bound by load
instructions rather than by arithmetic or memory (benchmarks/gpu_backbones.py reports which
bound it meets).

Precision. relu and the max pool only select input values, and the weights are rounded to the
input's type first (as autocast does), so both operands of every product are values of the
input's type. fp16 maps multiply on fp16 tensor cores with fp32 sums: two 11-bit significands
make a 22-bit product, which fp32 holds exactly. bf16 products (8 + 8 bits) would be exact in
bf16 tensor-core products too, but Triton's interpreter (3.9), which runs the CI tests, holds bf16
tiles as raw bits and multiplies the bits, so bf16 maps multiply as tf32 (which holds every bf16
value exactly; half the rate of a bf16 product). fp32 maps use three tf32 products per multiply
(tf32x3), within about 1e-6 of fp32 arithmetic. A NaN or an infinity in the input is kept
through relu and the pool, but the banded product spreads it as NaN to every output row of its
tile in the k columns around it (0 * inf is NaN), where PyTorch's stay in a k x k neighbourhood:
the outputs are non-finite wherever PyTorch's are, and in a few more places (a network that
overflows is broken either way).

Tuning (benchmarks/kernel_notes.md has the compiler's figures). A GPU keeps a memory-streaming
kernel busy by having many warps resident: at most 65536 registers per SM, so 16 warps need at
most 128 registers per thread. The kernel steps through the k columns in a loop the compiler does
not unroll, so only one column's loads are live at a time, and each variant's tile and register
cap (``config_for``) keep it at or under that. Pools above ``MAX_POOL`` (no released arch has
one) are left to PyTorch: their pool^2 loads per column, each with its own addresses, took up to
255 registers (8 warps per SM). So are kernels wider than ``MAX_K``, for which ``ROWS_IN`` is
sized and up to which benchmarks/kernel_resources.py builds.
"""
from typing import NamedTuple

import torch
import triton
import triton.language as tl

MAX_K = 9
MAX_POOL = 2


class Config(NamedTuple):
    """A variant's tile (output rows and columns per program) and launch options."""
    block_h: int
    block_w: int
    num_warps: int
    num_stages: int
    max_registers: int

    def options(self) -> dict:
        """The launch options (Triton's names). No product runs outside the tensor cores, so
        fusing multiplies and adds changes nothing; it is pinned because Triton's default
        changes in 3.10 (3.9 warns while it is unset)."""
        return dict(num_warps=self.num_warps, num_stages=self.num_stages,
                    maxnreg=self.max_registers, enable_fp_fusion=False)


ROWS_IN = 32
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def config_for(dtype: torch.dtype, pool: int) -> Config:
    """The compiler's figures for these choices are in benchmarks/kernel_notes.md.

    16 rows: the smallest M a tensor-core product takes; ROWS_IN = 32 input rows hold the
    16 + k - 1 <= 24 a tile needs (the product's K must be a power of two). 8 warps: at 4, a
    pooled tile took up to 154 registers per thread (the addresses of its pool^2 loads), room
    for 12 warps per SM. One stage: each further one holds another column's tile in shared
    memory (fp32, pool 2: 34 KB at 2 stages, 68 KB at 3), taken from the L1 that serves the k
    shifted reads of every input row; resident warps hide the load latency instead. Registers
    (ptxas's maxnreg, which it must meet or spill, and the compile test fails on a spill): 128,
    the budget of 16 warps per SM, for fp32 and pooled variants, which took 58-113 uncapped and
    spilled under a cap of 80; 80 (24 warps) for the others, which meet it without spilling.
    Uncapped, ptxas also spilled 8-16 bytes in some bf16 variants at 48 registers.
    """
    return Config(16, 64, 8, 1, 128 if dtype == torch.float32 or pool > 1 else 80)


class KernelLaunchError(RuntimeError):
    """The kernel did not build or launch for this variant (Triton's error, on one line)."""


@triton.jit
def _series_activation_kernel(x_ptr, w_ptr, b_ptr, y_ptr, C, H, W, H_in, W_in,
                              K: tl.constexpr, POOL: tl.constexpr, BLOCK_H: tl.constexpr,
                              ROWS_IN: tl.constexpr, BLOCK_W: tl.constexpr,
                              OPERAND: tl.constexpr, DOT_PRECISION: tl.constexpr):
    plane = tl.program_id(0)  # n * C + c
    h0 = tl.program_id(1) * BLOCK_H
    w0 = tl.program_id(2) * BLOCK_W
    c = plane % C
    pad = K // 2
    x_plane = x_ptr + plane.to(tl.int64) * H_in * W_in
    y_plane = y_ptr + plane.to(tl.int64) * H * W

    # Input rows of the tile (in pooled coordinates); the last ROWS_IN - (BLOCK_H + K - 1)
    # only pad ROWS_IN to a power of two and are never read.
    r = tl.arange(0, ROWS_IN)
    rows = h0 - pad + r
    row_ok = (r < BLOCK_H + K - 1) & (rows >= 0) & (rows < H)
    t = tl.arange(0, BLOCK_H)
    tap_row = r[None, :] - t[:, None]  # kernel row that links output row t to input row r
    on_band = (tap_row >= 0) & (tap_row < K)

    acc = tl.zeros((BLOCK_H, BLOCK_W), dtype=tl.float32)
    # A loop, not tl.static_range: unrolled, the compiler would hoist every column's loads
    # and hold them all in registers.
    for j in range(K):
        cols = w0 - pad + j + tl.arange(0, BLOCK_W)
        ok = row_ok[:, None] & ((cols >= 0) & (cols < W))[None, :]
        # relu(maxpool(x)) as max(0, x over the pool window), in the operands' type (exact);
        # out-of-map reads give the convolution's zero padding.
        xs = tl.zeros((ROWS_IN, BLOCK_W), dtype=OPERAND)
        for a in tl.static_range(POOL):
            for b in tl.static_range(POOL):
                offsets = (rows * POOL + a)[:, None] * W_in + (cols * POOL + b)[None, :]
                xs = tl.maximum(xs, tl.load(x_plane + offsets, mask=ok, other=0.).to(OPERAND),
                                propagate_nan=tl.PropagateNan.ALL)
        band = tl.load(w_ptr + c * K * K + tap_row * K + j, mask=on_band, other=0.)
        band = band.to(x_ptr.dtype.element_ty).to(OPERAND)
        acc = tl.dot(band, xs, acc, input_precision=DOT_PRECISION)

    acc += tl.load(b_ptr + c).to(tl.float32)
    out_rows = h0 + t
    out_cols = w0 + tl.arange(0, BLOCK_W)
    tl.store(y_plane + out_rows[:, None] * W + out_cols[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=(out_rows < H)[:, None] & (out_cols < W)[None, :])


def constexprs(dtype: torch.dtype, k: int, pool: int) -> dict:
    """The kernel's compile-time arguments for a variant (the launcher's and the compile test's)."""
    half = dtype == torch.float16
    config = config_for(dtype, pool)
    return dict(K=k, POOL=pool, BLOCK_H=config.block_h, ROWS_IN=ROWS_IN, BLOCK_W=config.block_w,
                OPERAND=tl.float16 if half else tl.float32,
                # tf32 holds bf16 values exactly; fp16 operands take no precision.
                DOT_PRECISION='tf32x3' if dtype == torch.float32 else 'tf32')


def why_not(dtype: torch.dtype, k: int, pool: int):
    """Why the kernel does not take a map of this type, kernel size and pool (None: it does)."""
    if dtype not in DTYPES:
        return f'it takes fp32, fp16 or bf16 maps, not {dtype}'
    if k % 2 == 0 or k > MAX_K:
        return f'it takes odd kernel sizes up to {MAX_K}, not {k}'
    if not 1 <= pool <= MAX_POOL:
        return f'it takes max pools up to {MAX_POOL}, not {pool}'
    return None


def launch(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, pool: int = 1):
    """(``fused_series_activation``'s result, the id of the compiled binary that ran, or None
    under Triton's interpreter). A failure to build or launch raises KernelLaunchError."""
    n, c, h_in, w_in = x.shape
    k = weight.shape[-1]
    if (not x.is_contiguous() or tuple(weight.shape) != (c, 1, k, k)
            or tuple(bias.shape) != (c, ) or why_not(x.dtype, k, pool)):
        raise ValueError(f'fused_series_activation takes a contiguous (N, C, H, W) fp32/fp16/'
                         f'bf16 map, a (C, 1, k, k) kernel with k odd <= {MAX_K} and a (C, ) '
                         f'bias, and 1 <= pool <= {MAX_POOL}; got {tuple(x.shape)} {x.dtype} '
                         f'(contiguous: {x.is_contiguous()}), {tuple(weight.shape)}, '
                         f'{tuple(bias.shape)}, pool={pool}')
    h, w = h_in // pool, w_in // pool
    y = torch.empty((n, c, h, w), device=x.device, dtype=x.dtype)
    if y.numel() == 0:
        return y, None
    config = config_for(x.dtype, pool)
    grid = (n * c, triton.cdiv(h, config.block_h), triton.cdiv(w, config.block_w))
    try:
        binary = _series_activation_kernel[grid](
            x, weight.contiguous(), bias.contiguous(), y, c, h, w, h_in, w_in,
            **constexprs(x.dtype, k, pool), **config.options())
    except Exception as err:  # Triton's compile, ptxas and launch errors have no common base
        message = (str(err).strip().splitlines() or [''])[0]
        raise KernelLaunchError(f'{type(err).__name__}: {message}') from err
    return y, getattr(binary, 'hash', None)


def fused_series_activation(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                            pool: int = 1) -> torch.Tensor:
    """``F.conv2d(F.relu(F.max_pool2d(x, pool)), weight, bias, padding=k // 2, groups=C)``.

    Args:
        x: contiguous (N, C, H, W) map, fp32, fp16 or bf16; the result has its dtype.
        weight: (C, 1, k, k) depthwise kernel, k odd, k <= MAX_K; rounded to x's dtype as
            autocast would.
        bias: (C, ) bias, added in fp32.
        pool: max-pool kernel and stride applied first (1: none), up to MAX_POOL, floor mode
            as nn.MaxPool2d.
    """
    return launch(x, weight, bias, pool)[0]
