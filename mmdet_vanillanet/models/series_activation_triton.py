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

Precision. Tiles are held in fp32 and multiplied as tf32, whose 11-bit significand holds every
fp16 and bf16 value exactly: for half inputs the products are exact (the weights are first
rounded to the input's type, as autocast does) and accumulate in fp32. fp32 inputs use three
tf32 products per multiply (tf32x3), within about 1e-6 of fp32 arithmetic. A NaN or an
infinity in the input is kept through relu and the pool, but the banded product spreads it as
NaN to every output row of its tile in the k columns around it (0 * inf is NaN), where
PyTorch's stay in a k x k neighbourhood: the outputs are non-finite wherever PyTorch's are,
and in a few more places (a network that overflows is broken either way).
"""
import torch
import triton
import triton.language as tl

BLOCK_H = 16   # output rows per program: the smallest M a tensor-core product takes
BLOCK_W = 64   # output columns per program
NUM_WARPS = 4


@triton.jit
def _series_activation_kernel(x_ptr, w_ptr, b_ptr, y_ptr, C, H, W, H_in, W_in,
                              K: tl.constexpr, POOL: tl.constexpr, BLOCK_H: tl.constexpr,
                              ROWS_IN: tl.constexpr, BLOCK_W: tl.constexpr,
                              DOT_PRECISION: tl.constexpr):
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
    for j in tl.static_range(K):
        cols = w0 - pad + j + tl.arange(0, BLOCK_W)
        ok = row_ok[:, None] & ((cols >= 0) & (cols < W))[None, :]
        # relu(maxpool(x)) as max(0, x over the pool window); out-of-map reads give the
        # convolution's zero padding.
        xs = tl.zeros((ROWS_IN, BLOCK_W), dtype=tl.float32)
        for a in tl.static_range(POOL):
            for b in tl.static_range(POOL):
                offsets = (rows * POOL + a)[:, None] * W_in + (cols * POOL + b)[None, :]
                xs = tl.maximum(xs, tl.load(x_plane + offsets, mask=ok, other=0.).to(tl.float32),
                                propagate_nan=tl.PropagateNan.ALL)
        band = tl.load(w_ptr + c * K * K + tap_row * K + j, mask=on_band, other=0.)
        band = band.to(x_ptr.dtype.element_ty).to(tl.float32)
        acc = tl.dot(band, xs, acc, input_precision=DOT_PRECISION)

    acc += tl.load(b_ptr + c).to(tl.float32)
    out_rows = h0 + t
    out_cols = w0 + tl.arange(0, BLOCK_W)
    tl.store(y_plane + out_rows[:, None] * W + out_cols[None, :],
             acc.to(y_ptr.dtype.element_ty),
             mask=(out_rows < H)[:, None] & (out_cols < W)[None, :])


def series_activation(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                      pool: int = 1) -> torch.Tensor:
    """``F.conv2d(F.relu(F.max_pool2d(x, pool)), weight, bias, padding=k // 2, groups=C)``.

    Args:
        x: contiguous (N, C, H, W) map, fp32, fp16 or bf16; the result has its dtype.
        weight: (C, 1, k, k) depthwise kernel, k odd; rounded to x's dtype as autocast would.
        bias: (C, ) bias, added in fp32.
        pool: max-pool kernel and stride applied first (1: none), floor mode as nn.MaxPool2d.
    """
    n, c, h_in, w_in = x.shape
    k = weight.shape[-1]
    if (not x.is_contiguous() or tuple(weight.shape) != (c, 1, k, k) or k % 2 == 0
            or tuple(bias.shape) != (c, ) or pool < 1):
        raise ValueError(f'series_activation takes a contiguous (N, C, H, W) map, a (C, 1, k, k) '
                         f'kernel with k odd and a (C, ) bias, and pool >= 1; got '
                         f'{tuple(x.shape)} (contiguous: {x.is_contiguous()}), '
                         f'{tuple(weight.shape)}, {tuple(bias.shape)}, pool={pool}')
    h, w = h_in // pool, w_in // pool
    y = torch.empty((n, c, h, w), device=x.device, dtype=x.dtype)
    if y.numel() == 0:
        return y
    grid = (n * c, triton.cdiv(h, BLOCK_H), triton.cdiv(w, BLOCK_W))
    _series_activation_kernel[grid](
        x, weight.contiguous(), bias.contiguous(), y, c, h, w, h_in, w_in,
        K=k, POOL=pool, BLOCK_H=BLOCK_H, ROWS_IN=triton.next_power_of_2(BLOCK_H + k - 1),
        BLOCK_W=BLOCK_W, DOT_PRECISION='tf32x3' if x.dtype == torch.float32 else 'tf32',
        num_warps=NUM_WARPS)
    return y
