"""Facts about the machine a benchmark ran on, and its dense matrix-product rate, measured in
the same run (the reference a network of 1x1 convs is compared with)."""
import contextlib
import os
import platform

import torch

from .timing import time_call


@torch.no_grad()
def matmul_gflops(device: str = 'cpu', iters: int = 5) -> float:
    """The machine's dense fp32 GEMM rate (2 flops per multiply-accumulate): the limit that a
    network of 1x1 convs can approach. The best rate seen over torch.mm and the same GEMM
    written as 1x1 convs of several widths, since they go through different libraries (on an
    AMD EPYC here MKL's torch.mm reached about 220 GFLOP/s and oneDNN's 1x1 conv up to 400)."""
    a = torch.randn(2048, 2048, device=device)
    candidates = [(lambda: a @ a, 2048 ** 3)]
    for n in (1024, 2048, 4096):
        x = torch.randn(1, n, 64, 64, device=device)
        w = torch.randn(n, n, 1, 1, device=device)
        candidates.append((lambda x=x, w=w: torch.nn.functional.conv2d(x, w), n * n * 64 * 64))
    return max(2 * macs / min(time_call(fn, iters, 1, device, progress=False)) / 1e9
               for fn, macs in candidates)


def machine_info(device: str = 'cpu') -> dict:
    info = dict(platform=platform.platform(), processor=platform.processor() or None,
                cpu_count=os.cpu_count(), torch=torch.__version__,
                threads=torch.get_num_threads(), device=device)
    if device.startswith('cuda'):
        info['gpu'] = torch.cuda.get_device_name()
    else:
        with contextlib.suppress(OSError):
            with open('/proc/cpuinfo') as f:
                names = [line.split(':', 1)[1].strip() for line in f
                         if line.startswith('model name')]
            info['cpu'] = names[0] if names else None
    return info
