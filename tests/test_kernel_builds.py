"""The activation kernel builds for real cards on this CPU-only machine: Triton compiles for a
named target without a GPU, and ptxas reports registers and spills (benchmarks/
kernel_resources.py, run in a subprocess: the tests' TRITON_INTERPRET=1 would interpret instead)."""
import json

from helpers import run

RELEASED_K = (7, 9)  # act_num 3 (the ImageNet checkpoints) and 4 (the detection backbone)


def test_every_variant_of_the_released_archs_builds_for_ampere_hopper_blackwell(tmp_path):
    out = tmp_path / 'build.json'
    run('benchmarks/kernel_resources.py', '--arch', '80', '90', '100',
        '--k', *map(str, RELEASED_K), '--no-notes', '--json', str(out))
    rows = json.load(open(out))
    built = {(r['arch'], r['k'], r['pool'], r['dtype'], r['weight_dtype']) for r in rows}
    # fp32 maps with fp32 weights; half maps with fp32 weights (autocast) or their own (a model
    # cast to the type); the pools of the released archs: none, and 2 in downsampling stages.
    assert built == {(arch, k, pool, dtype, wdtype) for arch in (80, 90, 100) for k in RELEASED_K
                     for pool in (1, 2) for dtype, wdtype in (
                         ('fp32', 'fp32'), ('fp16', 'fp32'), ('fp16', 'fp16'),
                         ('bf16', 'fp32'), ('bf16', 'bf16'))}
    for r in rows:
        assert 'error' not in r, r
        assert r['spill_bytes'] == 0, r
        assert r['warps_per_sm'] >= 16, r  # the floor for a memory-streaming kernel
        # fp16 on fp16 tensor-core products; fp32 (tf32x3) and bf16 on tf32 ones.
        product = {'fp32': 'tf32.tf32', 'fp16': 'f16.f16', 'bf16': 'tf32.tf32'}[r['dtype']]
        assert r['tensor_core'] and all(product in name for name in r['tensor_core']), r
