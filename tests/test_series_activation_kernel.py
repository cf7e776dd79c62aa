"""The Triton series-activation kernel, run by Triton's interpreter on the CPU, against PyTorch."""
import importlib
import os

import pytest
import torch
import torch.nn.functional as F

from helpers import build_backbone, fused_copy, max_rel_diff, narrow, randomize
from mmdet_vanillanet.errors import InputError
from mmdet_vanillanet.models import series_activation as act_module


@pytest.fixture(scope='module')
def interpreter():
    """The kernel's module, run by Triton's interpreter (conftest.py sets TRITON_INTERPRET)."""
    assert os.environ.get('TRITON_INTERPRET') == '1'
    return importlib.import_module('mmdet_vanillanet.models.series_activation_triton')


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
        got = interpreter.series_activation(x, weight, bias, pool)
        expected = reference(x, weight, bias, pool)
        assert got.shape == expected.shape and got.dtype == torch.float32
        assert relative_error(got, expected) <= TOLERANCE[torch.float32]


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_kernel_in_half_precision(dtype, interpreter):
    for pool in (1, 2):
        x, weight, bias = random_case((2, 2, 9, 20), 9, dtype, seed=pool)
        got = interpreter.series_activation(x, weight, bias, pool)
        expected = reference(x, weight.to(dtype), bias, pool)
        assert got.dtype == dtype
        assert relative_error(got, expected) <= TOLERANCE[dtype]


@pytest.mark.parametrize('bad', [float('nan'), float('inf')])
@pytest.mark.parametrize('pool', [1, 2])
def test_a_non_finite_input_is_never_hidden(pool, bad, interpreter):
    x, weight, bias = random_case((1, 2, 11, 13), 7, torch.float32, seed=3)
    x[0, 1, 5, 6] = bad
    got = interpreter.series_activation(x, weight, bias, pool)
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
            interpreter.series_activation(*args)


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

    monkeypatch.setattr(act_module, 'triton_kernel', no_kernel)
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
    with pytest.raises(InputError, match='no backward pass'):
        deployed13(x)
    with pytest.raises(InputError, match='memory format'), torch.no_grad():
        deployed13(x.contiguous(memory_format=torch.channels_last))
    monkeypatch.delenv('TRITON_INTERPRET')
    with pytest.raises(InputError, match='on cpu; the kernel runs on CUDA devices'), \
            torch.no_grad():
        deployed13(x)


def test_the_unfused_network_runs_pytorch_whatever_act_impl(monkeypatch):
    def no_kernel():
        raise AssertionError('the Triton kernel was asked for by an unfused network')

    monkeypatch.setattr(act_module, 'triton_kernel', no_kernel)
    model = randomize(build_backbone(arch=narrow('5'))).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        model.act_impl = 'triton'
        assert all(torch.equal(a, b) for a, b in zip(expected, model(x)))


def impls(model):
    return {m.act_impl for m in model.modules() if isinstance(m, act_module.SeriesActivation)}


def test_act_impl_is_a_config_key_and_changes_no_checkpoint():
    model = build_backbone(arch=narrow('5'), act_impl='torch', deploy=True)
    assert impls(model) == {'torch'}
    model.act_impl = 'auto'
    assert impls(model) == {'auto'}
    assert model.state_dict().keys() == build_backbone(arch=narrow('5'),
                                                       deploy=True).state_dict().keys()
    with pytest.raises(InputError, match="act_impl='cuda'"):
        build_backbone(arch=narrow('5'), act_impl='cuda')
    with pytest.raises(InputError, match='choose one of'):
        model.act_impl = 'fast'
