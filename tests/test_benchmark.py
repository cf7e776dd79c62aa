"""tools/benchmark.py on the toy config for a few iterations (no timing assertions)."""
import copy
import json
import os.path as osp
import runpy

import pytest
import torch
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules
from mmengine.config import Config

from helpers import CONFIG, REPO_ROOT, build_backbone, narrow, randomize, run
from mmdet_runsafe.errors import InputError
from mmdet_vanillanet.toolkit.benchmark import build_timed_detector, check_fusion, check_request

register_all_modules()


@pytest.mark.parametrize('extra', [[], ['--backbone-only', '--channels-last']])
@pytest.mark.slow
def test_compare_writes_sane_json(tmp_path, extra):
    out = tmp_path / 'bench.json'
    output = run('tools/benchmark.py', CONFIG, '--compare', '--check', '--shape', '96', '128',
                 '--iters', '2', '--warmup', '1', '--no-progress', '--out', str(out),
                 '--act-impl', 'torch', *extra)
    report = json.loads(out.read_text())
    assert report['act_impl'] == 'torch' and report['settings']['act_impl'] == 'torch'
    assert report['results']['fused']['activation'] == 'torch' and report['kernel_checks'] == {}
    assert report['machine']['torch'] == torch.__version__ and report['machine']['threads'] >= 1
    assert report['settings']['iters'] == 2 and report['check_max_rel_diff'] <= 1e-4
    assert set(report['results']) == {'unfused', 'fused'}
    for r in report['results'].values():
        assert r['iters'] == 2 and 0 < r['median_ms'] <= r['p90_ms']
        assert r['gflops'] > 0 and r['input_shape'] == [96, 128]
    fused, unfused = report['results']['fused'], report['results']['unfused']
    assert fused['params_m'] < unfused['params_m']  # BN and the second 1x1 convs are gone
    assert report['speedup'] == pytest.approx(unfused['median_ms'] / fused['median_ms'])
    if '--backbone-only' in extra:
        assert report['part'] == 'backbone' and report['matmul_gflop_s'] > 0
        assert fused['efficiency'] == pytest.approx(fused['achieved_gflop_s']
                                                    / report['matmul_gflop_s'])
    speedup = f'{report["speedup"]:.2f}x faster' if report['speedup'] >= 1 else \
        f'{1 / report["speedup"]:.2f}x slower'  # never '0.69x faster'
    assert f'fused is {speedup} than unfused' in output


def test_check_catches_a_broken_fusion():
    detector = MODELS.build(Config.fromfile(CONFIG).model).eval()
    randomize(detector.backbone)
    fused = copy.deepcopy(detector)
    fused.backbone.switch_to_deploy()
    x = torch.randn(1, 3, 64, 64)
    assert check_fusion(detector, fused, x) <= 1e-4
    with torch.no_grad():
        fused.backbone.stages[2].conv.weight[0, 0] += 1.0  # a corrupted fused weight
    with pytest.raises(InputError, match='the fused backbone differs from the unfused one'):
        check_fusion(detector, fused, x)


@pytest.mark.slow
def test_check_on_an_already_fused_config_is_a_one_line_error():
    output = run('tools/benchmark.py', CONFIG, '--check', '--shape', '64', '64', '--iters', '1',
                 '--cfg-options', 'model.backbone.deploy=True', expect_ok=False)
    assert output.strip().splitlines()[-1].startswith('error: --compare and --check need the '
                                                      'unfused network')


def test_int8_needs_the_onnxruntime_backend():
    build_parser = runpy.run_path(osp.join(REPO_ROOT, 'tools', 'benchmark.py'),
                                  run_name='tools.benchmark')['build_parser']
    options = build_parser().parse_args([CONFIG, '--backbone-only', '--int8'])
    with pytest.raises(InputError, match='--int8 times the INT8 file in onnxruntime: add '
                                         '--backend onnxruntime'):
        check_request(Config.fromfile(CONFIG), options)


def test_building_a_detector_leaves_the_config_as_it_was():
    cfg = Config.fromfile(CONFIG)
    before = copy.deepcopy(cfg.model)
    build_timed_detector(cfg)
    assert cfg.model == before


@pytest.mark.slow
def test_onnxruntime_backend_times_the_exported_fused_backbone_beside_pytorch(tmp_path):
    out = tmp_path / 'ort.json'
    output = run('tools/benchmark.py', CONFIG, '--backbone-only', '--deploy', '--backend',
                 'onnxruntime', '--int8', '--shape', '96', '128', '--iters', '2', '--warmup',
                 '1', '--no-progress', '--out', str(out))
    report = json.loads(out.read_text())
    results = report['results']
    ort, fused, int8 = results['onnxruntime'], results['fused'], results['onnxruntime_int8']
    for r in (ort, int8):
        assert r['iters'] == 2 and r['activation'] == 'onnxruntime' and r['median_ms'] > 0
        assert r['gflops'] == fused['gflops'] and r['params_m'] == fused['params_m']
    assert report['onnxruntime_speedup'] == pytest.approx(fused['median_ms'] / ort['median_ms'])
    assert report['int8_speedup'] == pytest.approx(ort['median_ms'] / int8['median_ms'])
    assert 'onnxruntime INT8 is' in output and report['settings']['int8'] is True
    refused = run('tools/benchmark.py', CONFIG, '--backend', 'onnxruntime', '--iters', '1',
                  expect_ok=False)
    assert 'error: --backend onnxruntime times the fused backbone' in refused


def test_flops_are_counted_with_the_kernel_chosen_and_its_checks_reported(capsys):
    """A trace cannot record a Triton kernel (act_impl='triton' refuses one), so the counter
    runs PyTorch's activations, which compute the same convolutions: the same count, and the
    kernel still runs (here in Triton's interpreter) where the timing calls the backbone."""
    from mmengine.analysis import get_model_complexity_info

    from mmdet_vanillanet.ops.activation_kernel import kernel_checks
    from mmdet_vanillanet.toolkit.benchmark import print_table
    from mmdet_vanillanet.toolkit.complexity import traceable_activations
    kernel = randomize(build_backbone(arch=narrow('5', 128), act_num=3)).eval()
    kernel.switch_to_deploy()
    kernel.act_impl = 'triton'
    x = torch.randn(1, 3, 32, 32)
    with traceable_activations(kernel):
        counted = get_model_complexity_info(kernel, inputs=(x, ), show_table=False,
                                            show_arch=False)
    assert {m.act_impl for m in kernel.modules() if hasattr(m, 'act_impl')} == {'triton'}
    kernel.act_impl = 'torch'
    plain = get_model_complexity_info(kernel, inputs=(x, ), show_table=False, show_arch=False)
    assert (counted['flops'], counted['params']) == (plain['flops'], plain['params']) != (0, 0)
    kernel.act_impl = 'triton'
    with torch.no_grad():
        kernel(x)
    checks = kernel_checks()
    assert checks and all(c['passed'] for c in checks.values())
    machine = dict(cpu='cpu', torch=torch.__version__, threads=1)
    failed = {**next(iter(checks.values())), 'passed': False, 'failure': 'differs by 0.5'}
    print_table(dict(config='c', part='backbone', machine=machine, act_impl='triton',
                     results={}, kernel_checks={**checks, 'k=9 bad': failed}))
    printed = capsys.readouterr().out
    assert 'k=9 bad: FAILED its check (differs by 0.5), PyTorch ran instead' in printed
    assert printed.count('checked against PyTorch (max rel err') == len(checks)
