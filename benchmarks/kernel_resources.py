"""What the series-activation kernel takes on real cards, read from the compiler without a GPU.

    python benchmarks/kernel_resources.py                      # table into kernel_notes.md
    python benchmarks/kernel_resources.py --json build.json    # and every figure as JSON

Triton compiles for a named target on a CPU-only machine. For each variant the kernel runs (odd
k up to MAX_K, pool up to MAX_POOL, fp32/fp16/bf16 maps; for the half types, weights in fp32, as
under autocast, or in the map's type, as in a model cast to it) and each target (sm_80, sm_90,
sm_100: the ptxas in Triton's wheel builds all three), it builds the cubin with the launcher's
own compile-time arguments and reads:
- registers per thread, stack and local memory (spills) and static shared memory, from
  ``cuobjdump --dump-resource-usage`` (shipped in Triton's wheel); dynamic shared memory from
  Triton's metadata;
- the tensor-core instructions in the PTX (their type sets the rate: tf32 products run at half
  the fp16/bf16 rate on Ampere and Hopper);
- the theoretical warps per SM, and which resource limits them (registers per SM sub-partition,
  shared memory, warps, programs).
It exits with status 1 if a variant fails to build or spills (tests/test_kernel_builds.py runs it
so). Builds run in --jobs processes; Triton caches them (TRITON_CACHE_DIR, ~/.triton/cache).
"""
import argparse
import json
import os
import os.path as osp
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from mmdet_vanillanet.ops import triton_activation as kernel

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
NOTES = osp.join(REPO_ROOT, 'benchmarks', 'kernel_notes.md')
START, END = '<!-- kernel_resources.py: start -->', '<!-- kernel_resources.py: end -->'
CUOBJDUMP = osp.join(osp.dirname(triton.__file__), 'backends', 'nvidia', 'bin', 'cuobjdump')
TYPES = {torch.float32: 'fp32', torch.float16: 'fp16', torch.bfloat16: 'bf16'}
# Per SM on the cards of each target (CUDA's occupancy tables): registers (in 4 sub-partitions,
# allocated per warp in units of 256), usable shared memory (1 KB more is reserved per program),
# resident warps and programs.
LIMITS = {80: dict(card='A100', regs=65536, shared=167936, warps=64, programs=32),
          90: dict(card='H100/H200', regs=65536, shared=233472, warps=64, programs=32),
          100: dict(card='B200', regs=65536, shared=233472, warps=64, programs=32)}


def variants(ks, pools) -> list:
    """(k, pool, map dtype, weight dtype) of every variant the launcher can build."""
    return [(k, pool, dtype, wdtype) for dtype in kernel.DTYPES
            for wdtype in sorted({torch.float32, dtype}, key=str) for pool in pools for k in ks]


def warps_per_sm(regs: int, shared: int, limits: dict, num_warps: int):
    """(theoretical resident warps per SM, the resource that limits them)."""
    regs_per_warp = -(-regs * 32 // 256) * 256
    by = dict(registers=(limits['regs'] // 4 // regs_per_warp) * 4 // num_warps,
              shared_memory=limits['shared'] // (shared + 1024),
              warps=limits['warps'] // num_warps, programs=limits['programs'])
    limit = min(by, key=by.get)
    return by[limit] * num_warps, limit


def build(arch: int, k: int, pool: int, dtype, wdtype) -> dict:
    row = dict(arch=arch, k=k, pool=pool, dtype=TYPES[dtype], weight_dtype=TYPES[wdtype])
    args = kernel.constexprs(dtype, k, pool)
    config = kernel.config_for(dtype, pool)
    signature = dict(x_ptr=f'*{TYPES[dtype]}', w_ptr=f'*{TYPES[wdtype]}', b_ptr='*fp32',
                     y_ptr=f'*{TYPES[dtype]}', C='i32', H='i32', W='i32', H_in='i32',
                     W_in='i32', **{name: 'constexpr' for name in args})
    try:
        compiled = triton.compile(
            ASTSource(fn=kernel._series_activation_kernel, signature=signature, constexprs=args),
            target=GPUTarget('cuda', arch, 32),
            options=config.options())
    except Exception as err:  # a build error is a result here, not the end of the run
        return dict(row, error=f'{type(err).__name__}: {str(err).strip()[:500]}')
    with tempfile.NamedTemporaryFile(suffix='.cubin') as cubin:
        cubin.write(compiled.asm['cubin'])
        cubin.flush()
        usage = subprocess.run([CUOBJDUMP, '--dump-resource-usage', cubin.name],
                               capture_output=True, text=True, check=True).stdout
    regs, stack, static_shared, local = map(int, re.search(
        r'REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)', usage).groups())
    shared = static_shared + compiled.metadata.shared
    mma = re.findall(r'^\s*(w?mma\.\S+)', compiled.asm['ptx'], flags=re.M)
    warps, limit = warps_per_sm(regs, shared, LIMITS[arch], config.num_warps)
    return dict(row, config=config._asdict(), registers=regs, spill_bytes=stack + local,
                shared_bytes=shared, warps_per_sm=warps, limited_by=limit,
                tensor_core={name: mma.count(name) for name in sorted(set(mma))})


def markdown(rows: list) -> str:
    lines = [START, '',
             'Registers per thread for each k; spills (stack + local bytes) and shared memory: '
             'the most over the k; tensor-core instructions: static count in the PTX (per warp, '
             'per kernel column); warps per SM: the fewest over the k, and what limits them. '
             'Config: tile, warps per program, pipeline stages, register cap (maxnreg). '
             f'Command: `python benchmarks/kernel_resources.py` (Triton {triton.__version__}).',
             '', '| target | map / weights | pool | config | registers (k = '
             + ', '.join(str(k) for k in sorted({r['k'] for r in rows})) + ') | spills | '
             'shared | tensor-core instructions | warps per SM |',
             '|---|---|---|---|---|---|---|---|---|']
    groups = {}
    for r in rows:
        groups.setdefault((r['arch'], r['dtype'], r['weight_dtype'], r['pool']), []).append(r)
    for (arch, dtype, wdtype, pool), group in groups.items():
        target = f'| sm_{arch} ({LIMITS[arch]["card"]}) | {dtype} / {wdtype} | {pool} |'
        failed = [r for r in group if 'error' in r]
        if failed:
            lines.append(f'{target} | build failed: {failed[0]["error"][:80]} | | | | |')
            continue
        c = group[0]['config']
        fewest = min(group, key=lambda r: r['warps_per_sm'])
        mma = ', '.join(f'{n} {name}' for name, n in group[-1]['tensor_core'].items())
        lines.append(
            f'{target} {c["block_h"]}x{c["block_w"]}, {c["num_warps"]}, {c["num_stages"]}, '
            f'{c["max_registers"]} | ' + ', '.join(str(r['registers']) for r in group)
            + f' | {max(r["spill_bytes"] for r in group)} | '
            f'{max(r["shared_bytes"] for r in group) // 1024} KB | {mma} | '
            f'{fewest["warps_per_sm"]} ({fewest["limited_by"].replace("_", " ")}) |')
    return '\n'.join(lines + ['', END])


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--arch', type=int, nargs='+', default=sorted(LIMITS),
                        choices=sorted(LIMITS), help='compute capabilities to build for')
    parser.add_argument('--k', type=int, nargs='+', default=list(range(3, kernel.MAX_K + 1, 2)))
    parser.add_argument('--pool', type=int, nargs='+',
                        default=list(range(1, kernel.MAX_POOL + 1)))
    parser.add_argument('--jobs', type=int, default=2, help='builds in parallel')
    parser.add_argument('--json', help='write every figure here')
    parser.add_argument('--no-notes', action='store_true',
                        help=f'do not write the table into {osp.relpath(NOTES, REPO_ROOT)}')
    args = parser.parse_args()
    if os.environ.get('TRITON_INTERPRET') == '1':
        sys.exit('error: TRITON_INTERPRET=1 makes Triton interpret kernels instead of compiling '
                 'them; run without it')
    jobs = [(arch, *v) for arch in args.arch for v in variants(args.k, args.pool)]
    with ProcessPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(build, *zip(*jobs)))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(rows, f, indent=1)
    table = markdown(rows)
    print(table)
    if not args.no_notes:
        notes = open(NOTES).read()
        start, end = notes.index(START), notes.index(END) + len(END)
        with open(NOTES, 'w') as f:
            f.write(notes[:start] + table + notes[end:])
    bad = [r for r in rows if 'error' in r or r['spill_bytes']]
    for r in bad:
        print(f'FAILED: {r}', file=sys.stderr)
    sys.exit(1 if bad else 0)


if __name__ == '__main__':
    main()
