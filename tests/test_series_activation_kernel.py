"""The Triton series-activation kernel, run by Triton's interpreter on the CPU, against PyTorch;
and the guard that compares it with PyTorch on its first call (kernels that compute wrong or do not
build, run in the interpreter)."""
import importlib
import os
import re
import warnings

import pytest
import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from helpers import build_backbone, fused_copy, max_rel_diff, narrow, randomize
from mmdet_vanillanet.config_error import ConfigError
from mmdet_vanillanet.models.series_activation import SeriesActivation
from mmdet_vanillanet.ops import activation_kernel as kernel_module


@pytest.fixture(scope='module')
def interpreter():
    """The kernel's module, run by Triton's interpreter (conftest.py sets TRITON_INTERPRET)."""
    assert os.environ.get('TRITON_INTERPRET') == '1'
    return importlib.import_module('mmdet_vanillanet.ops.triton_activation')


# Relative L2 error against float64 PyTorch. The interpreter rounds to bf16 by truncation
# (a GPU rounds to nearest), hence the looser bf16 bound.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 2e-2}


def reference(x, weight, bias, pool):
    """F.conv2d(relu(max_pool(x))) in float64."""
    x = x.double()
    if pool > 1:
        x = F.max_pool2d(x, pool)
    return F.conv2d(F.relu(x), weight.double(), bias.double(), padding=weight.shape[-1] // 2,
                    groups=weight.shape[0])


def relative_error(got, expected):
    return ((got.double() - expected).norm() / expected.norm()).item()


def random_case(shape, k, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen).to(dtype)
    weight = torch.randn(shape[1], 1, k, k, generator=gen) / k
    bias = torch.randn(shape[1], generator=gen)
    return x, weight, bias


@pytest.mark.parametrize('pool', [1, 2])
@pytest.mark.parametrize('k', [3, 7, 9])
def test_kernel_equals_conv_of_relu(k, pool, interpreter):
    # 5x6: smaller than the kernel (the pooled 2x3 too); 37x131: odd sides, more than one
    # tile of rows (16) and of columns (64), pooled (18x65) or not.
    for i, (h, w) in enumerate([(5, 6), (37, 131)]):
        x, weight, bias = random_case((2, 2, h, w), k, torch.float32, seed=10 * k + i)
        got = interpreter.fused_series_activation(x, weight, bias, pool)
        expected = reference(x, weight, bias, pool)
        assert got.shape == expected.shape and got.dtype == torch.float32
        assert relative_error(got, expected) <= TOLERANCE[torch.float32]


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_kernel_in_half_precision(dtype, interpreter):
    for pool in (1, 2):
        x, weight, bias = random_case((2, 2, 9, 20), 9, dtype, seed=pool)
        got = interpreter.fused_series_activation(x, weight, bias, pool)
        expected = reference(x, weight.to(dtype), bias, pool)
        assert got.dtype == dtype
        assert relative_error(got, expected) <= TOLERANCE[dtype]


@pytest.mark.parametrize('bad', [float('nan'), float('inf')])
@pytest.mark.parametrize('pool', [1, 2])
def test_a_non_finite_input_is_never_hidden(pool, bad, interpreter):
    x, weight, bias = random_case((1, 2, 11, 13), 7, torch.float32, seed=3)
    x[0, 1, 5, 6] = bad
    got = interpreter.fused_series_activation(x, weight, bias, pool)
    expected = reference(x, weight, bias, pool)
    # Every output PyTorch makes non-finite is non-finite (neither relu nor the pool may drop
    # it); the other channel is untouched.
    assert not expected.isfinite().all() and not got[~expected.isfinite()].isfinite().any()
    assert relative_error(got[:, :1], expected[:, :1]) <= TOLERANCE[torch.float32]


def test_the_kernel_names_inputs_it_cannot_take(interpreter):
    x, weight, bias = random_case((1, 2, 8, 8), 3, torch.float32, seed=4)
    for args in ((x.transpose(2, 3), weight, bias, 1), (x, weight[..., :2, :2], bias, 1),
                 (x, weight[..., :2], bias, 1), (x, weight, bias[:1], 1)):
        with pytest.raises(ValueError, match='takes a contiguous'):
            interpreter.fused_series_activation(*args)


@pytest.fixture(scope='module')
def deployed13():
    """A narrow deploy-mode VanillaNet-13 (act_num 4, widths / 256: the interpreter runs one
    program per channel plane): pools in stages 1, 2 and 9."""
    model = randomize(build_backbone(arch=narrow('13', 256), act_num=4)).eval()
    return fused_copy(model)


def test_deployed_network_with_the_kernel_equals_pytorch(deployed13):
    x = torch.randn(1, 3, 64, 72, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        deployed13.act_impl = 'torch'
        expected = deployed13(x)
        deployed13.act_impl = 'triton'
        got = deployed13(x)
    assert max_rel_diff(expected, got) <= 1e-5


def test_kernel_follows_autocast(deployed13):
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        deployed13.act_impl = 'torch'
        expected = deployed13(x)
        deployed13.act_impl = 'triton'
        got = deployed13(x)
    assert all(t.dtype == torch.bfloat16 for t in got)
    assert max_rel_diff([t.float() for t in expected], [t.float() for t in got]) <= 5e-2


def test_auto_keeps_pytorch_on_the_cpu(deployed13, monkeypatch):
    def no_kernel():
        raise AssertionError('the Triton kernel was asked for on the CPU')

    monkeypatch.setattr(kernel_module, 'triton_kernel', no_kernel)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        deployed13.act_impl = 'torch'
        expected = deployed13(x)
        deployed13.act_impl = 'auto'
        got = deployed13(x)
    assert all(torch.equal(a, b) for a, b in zip(expected, got))


def test_forced_kernel_names_why_it_cannot_run(deployed13, monkeypatch):
    x = torch.randn(1, 3, 64, 64)
    deployed13.act_impl = 'triton'
    with pytest.raises(ConfigError, match='no backward pass'):
        deployed13(x)
    with pytest.raises(ConfigError, match='memory format'), torch.no_grad():
        deployed13(x.contiguous(memory_format=torch.channels_last))
    monkeypatch.delenv('TRITON_INTERPRET')
    with pytest.raises(ConfigError, match='on cpu; the kernel runs on CUDA devices'), \
            torch.no_grad():
        deployed13(x)


def test_the_unfused_network_runs_pytorch_whatever_act_impl(monkeypatch):
    def no_kernel():
        raise AssertionError('the Triton kernel was asked for by an unfused network')

    monkeypatch.setattr(kernel_module, 'triton_kernel', no_kernel)
    model = randomize(build_backbone(arch=narrow('5'))).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        model.act_impl = 'triton'
        assert all(torch.equal(a, b) for a, b in zip(expected, model(x)))


def impls(model):
    return {m.act_impl for m in model.modules() if isinstance(m, SeriesActivation)}


def test_act_impl_is_a_config_key_and_changes_no_checkpoint():
    model = build_backbone(arch=narrow('5'), act_impl='torch', deploy=True)
    assert impls(model) == {'torch'}
    model.act_impl = 'auto'
    assert impls(model) == {'auto'}
    assert model.state_dict().keys() == build_backbone(arch=narrow('5'),
                                                       deploy=True).state_dict().keys()
    with pytest.raises(ConfigError, match="act_impl='cuda'"):
        build_backbone(arch=narrow('5'), act_impl='cuda')
    with pytest.raises(ConfigError, match='choose one of'):
        model.act_impl = 'fast'


def test_wider_kernels_and_pools_are_left_to_pytorch(monkeypatch):
    """k > 9 and pools above 2: no compile test builds them (ops/triton_activation.py)."""
    monkeypatch.setattr(kernel_module, '_device_why_not', lambda x, act_impl: None)
    x = torch.randn(1, 2, 16, 16)
    for act_num, pool, why in ((5, 1, 'odd kernel sizes up to 9, not 11'),
                               (4, 4, 'max pools up to 2, not 4')):
        act = SeriesActivation(2, act_num, deploy=True)  # act_impl 'auto'
        with torch.no_grad():
            assert pooled(act, pool).implementation_for(x) == f'torch (it takes {why})'
            act.act_impl = 'triton'
            with pytest.raises(ConfigError, match=why):
                pooled(act, pool)(x)


# --- the guard ------------------------------------------------------------------------------

@triton.jit
def _zeros_kernel(x_ptr, w_ptr, b_ptr, y_ptr, C, H, W, H_in, W_in, K: tl.constexpr,
                  POOL: tl.constexpr, BLOCK_H: tl.constexpr, ROWS_IN: tl.constexpr,
                  BLOCK_W: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Writes zeros: a kernel that builds, runs and computes wrong."""
    rows = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    cols = tl.program_id(2) * BLOCK_W + tl.arange(0, BLOCK_W)
    tl.store(y_ptr + tl.program_id(0).to(tl.int64) * H * W + rows[:, None] * W + cols[None, :],
             tl.zeros((BLOCK_H, BLOCK_W), dtype=y_ptr.dtype.element_ty),
             mask=(rows < H)[:, None] & (cols < W)[None, :])


@triton.jit
def _unbuildable_kernel(x_ptr, w_ptr, b_ptr, y_ptr, C, H, W, H_in, W_in, K: tl.constexpr,
                        POOL: tl.constexpr, BLOCK_H: tl.constexpr, ROWS_IN: tl.constexpr,
                        BLOCK_W: tl.constexpr, DOT_PRECISION: tl.constexpr):
    tl.static_assert(K < 0, 'this kernel does not build')


@pytest.fixture
def guard(monkeypatch, interpreter):
    """A process in which no kernel variant has been checked yet, and 'auto' takes the CPU
    under the interpreter as it would take a CUDA device."""
    monkeypatch.setattr(kernel_module, '_RECORDS', {})
    monkeypatch.setattr(kernel_module, '_device_why_not', lambda x, act_impl: None)
    return interpreter


def deployed_activation(act_impl):
    """A fused 9x9 activation of two channels with random weights."""
    act = SeriesActivation(2, act_num=4, deploy=True)
    act.act_impl = act_impl
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        act.weight.copy_(torch.randn(act.weight.shape, generator=gen) / 9)
        act.bias.copy_(torch.randn(act.bias.shape, generator=gen))
    return act.requires_grad_(False)  # inference: the kernel has no backward pass


def pooled(act, pool):
    """The fused activation with the max pool of a block of stride ``pool`` folded in."""
    act.pool = pool
    return act


def pytorch_result(act, x, pool):
    impl, act.act_impl = act.act_impl, 'torch'
    try:
        return pooled(act, pool)(x)
    finally:
        act.act_impl = impl


def guard_input(pool=1, seed=0):
    """Two images of two channels whose (pooled) 20x70 map has two row tiles of 16 and two
    column tiles of 64, partial at the bottom and the right."""
    return torch.randn(2, 2, 20 * pool, 70 * pool, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize('pool', [1, 2])
def test_a_kernel_that_passes_its_check_runs_and_is_reported(pool, guard):
    act = deployed_activation('auto')
    x = guard_input(pool, seed=1)
    with torch.no_grad():
        got = pooled(act, pool)(x)
        expected = pytorch_result(act, x, pool)
    assert relative_error(got, expected.double()) <= TOLERANCE[torch.float32]
    assert not torch.equal(got, expected)  # the kernel's result, not PyTorch's
    (name, check), = kernel_module.kernel_checks().items()
    assert name == f'k=9 pool={pool} float32 (weights float32) on cpu, tile 16x64 with 8 warps'
    assert check['passed'] and check['checked_binaries'] == 1 and check['failure'] is None
    assert 0 < check['max_rel_err'] <= check['tolerance'] == 1e-5
    assert pooled(act, pool).implementation_for(x) == 'triton'


@pytest.mark.parametrize('act_impl', ['auto', 'triton'])
@pytest.mark.parametrize('wrong', ['computes zeros', 'does not build'])
def test_a_wrong_or_unbuildable_kernel_never_gives_its_result(wrong, act_impl, guard,
                                                              monkeypatch):
    right = guard._series_activation_kernel
    monkeypatch.setattr(guard, '_series_activation_kernel', {
        'computes zeros': _zeros_kernel, 'does not build': _unbuildable_kernel}[wrong])
    failure = {'computes zeros': r'differs from PyTorch on its first call \(relative error 1 ',
               'does not build': r'did not build or launch \(.*this kernel does not build'}[wrong]
    variant = r'k=9 pool=2 float32 \(weights float32\) on cpu, tile 16x64 with 8 warps'
    act = deployed_activation(act_impl)
    x = guard_input(pool=2)
    expected = pytorch_result(act, x, 2)
    with torch.no_grad():
        if act_impl == 'triton':
            for _ in range(2):  # and every later call of the variant
                with pytest.raises(ConfigError, match=f"act_impl='triton'.*{variant}") as err:
                    pooled(act, 2)(x)
                assert '\n' not in str(err.value)
        else:
            with pytest.warns(UserWarning, match=f'{variant} {failure}.*rest of the process'):
                got = pooled(act, 2)(x)
            assert torch.equal(got, expected)
            with warnings.catch_warnings():
                warnings.simplefilter('error')  # warned once per variant
                assert torch.equal(pooled(act, 2)(x), expected)
        assert pooled(act, 2).implementation_for(x).startswith('torch (the kernel k=9 pool=2')
        # Another variant is checked on its own: the right kernel passes at pool 1.
        monkeypatch.setattr(guard, '_series_activation_kernel', right)
        pooled(act, 1)(guard_input())
    checks = {check['pool']: check for check in kernel_module.kernel_checks().values()}
    assert not checks[2]['passed'] and re.match(failure, checks[2]['failure'])
    assert checks[1]['passed']


@pytest.mark.parametrize('spot', ['first plane, top-left corner', 'first tile boundary',
                                  'middle plane', 'last plane, bottom-right corner'])
def test_the_check_sees_one_wrong_output_at_the_edges_and_tile_boundaries(spot, guard,
                                                                          monkeypatch):
    launch = guard.launch
    index = {'first plane, top-left corner': (0, 0, 0, 0), 'first tile boundary': (0, 0, 16, 64),
             'middle plane': (1, 0, 10, 40), 'last plane, bottom-right corner': (-1, -1, -1, -1)}

    def off_by_one(*args):
        y, binary = launch(*args)
        y[index[spot]] += 1.
        return y, binary

    monkeypatch.setattr(guard, 'launch', off_by_one)
    act = deployed_activation('triton')
    with pytest.raises(ConfigError, match='differs from PyTorch'), torch.no_grad():
        pooled(act, 1)(guard_input())


def test_a_non_finite_input_defers_the_check_to_the_next_call(guard):
    act = deployed_activation('auto')
    x = guard_input()
    x[0, 0, 3, 3] = float('nan')
    with torch.no_grad():
        # PyTorch's result: the kernel spreads a NaN further (ops/triton_activation.py).
        assert torch.equal(act(x).nan_to_num(), pytorch_result(act, x, 1).nan_to_num())
        check, = kernel_module.kernel_checks().values()
        assert check['checked_binaries'] == 0 and not check['passed']
        act(guard_input(seed=1))
    check, = kernel_module.kernel_checks().values()
    assert check['checked_binaries'] == 1 and check['passed']


def test_no_check_while_a_graph_is_traced_or_captured(guard, monkeypatch):
    """A check synchronises with the host, which torch.compile's tracing and CUDA graph
    capture cannot take: an unchecked variant runs PyTorch there, or is an error."""
    act = deployed_activation('auto')
    x = guard_input()
    monkeypatch.setattr(torch.compiler, 'is_compiling', lambda: True)
    with torch.no_grad():
        assert 'cannot be done while torch.compile traces' in act.implementation_for(x)
        assert torch.equal(act(x), pytorch_result(act, x, 1))
        assert kernel_module.kernel_checks() == {}
        act.act_impl = 'triton'
        with pytest.raises(ConfigError, match='make one call before'):
            act(x)
        monkeypatch.setattr(torch.compiler, 'is_compiling', lambda: False)
        act(x)  # checked here
        monkeypatch.setattr(torch.compiler, 'is_compiling', lambda: True)
        assert act.implementation_for(x) == 'triton'
        assert not torch.equal(act(x), pytorch_result(act, x, 1))


@pytest.mark.parametrize('faster', ['torch', 'triton'])
def test_auto_keeps_the_faster_per_shape_under_cudnn_benchmark(faster, guard, monkeypatch):
    times = {'torch': 1., 'triton': 2.} if faster == 'torch' else {'torch': 2., 'triton': 1.}
    timed = []

    def time_ms(fn, device):
        # the kernel is timed first, then PyTorch
        timed.append('triton' if len(timed) % 2 == 0 else 'torch')
        return times[timed[-1]], fn()

    monkeypatch.setattr(kernel_module, '_time_ms', time_ms)
    monkeypatch.setattr(torch.backends.cudnn, 'benchmark', True)
    act = deployed_activation('auto')
    small, large = torch.randn(1, 2, 9, 20), torch.randn(1, 2, 20, 9)
    with torch.no_grad():
        for x in (small, small, large):
            got = act(x)
            expected = pytorch_result(act, x, 1)
            assert torch.equal(got, expected) == (faster == 'torch')
    assert len(timed) == 4  # once per shape
    check, = kernel_module.kernel_checks().values()
    assert check['timings'] == {'1x2x9x20': dict(triton_ms=times['triton'],
                                                 torch_ms=times['torch']),
                                '1x2x20x9': dict(triton_ms=times['triton'],
                                                 torch_ms=times['torch'])}
    assert act.implementation_for(small).startswith(
        'torch (PyTorch timed faster' if faster == 'torch' else 'triton')
