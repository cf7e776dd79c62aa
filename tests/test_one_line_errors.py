"""Bad input to the tools is one line, before any work (issue 17 items 6-10): output paths that
are folders, missing or unwritable; opsets the exporter does not write; thread counts, devices
and precisions this build cannot run; flags that cannot act; a conversion onto its own source.
The checks are tested here as functions, and each tool once as the user runs it. A library
function's error names its arguments as the caller wrote them, never a command-line flag; the
tools word them as their flags (issue 23)."""
import argparse
import ast
import errno
import glob
import os
import os.path as osp
import re
import runpy
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from mmdet.registry import MODELS
from mmengine.config import Config

from helpers import (
    CONFIG,
    REPO_ROOT,
    RunsCode,
    randomize,
    run,
    save_toy_checkpoint,
    toy_test_config,
    train,
)
from mmdet_runsafe.cli import TRAINING_REMEDY, add_runner_args, one_line_errors
from mmdet_runsafe.config import load_config
from mmdet_runsafe.datasets import check_dataset_paths
from mmdet_runsafe.errors import Argument, InputError, output_exists
from mmdet_runsafe.preflight import prepare_train_run
from mmdet_runsafe.work_dir import require_writable
from mmdet_vanillanet.apis import OnnxDetector, convert_checkpoint, fuse_detector
from mmdet_vanillanet.deploy import onnx_export
from vanillanet_toolkit.benchmark import check_request
from vanillanet_toolkit.complexity import detector_complexity, pseudo_batch
from vanillanet_toolkit.demo import toy_data_options
from vanillanet_toolkit.runs import build_test_runner
from vanillanet_toolkit.timing import Settings, measure, measure_onnxruntime

BENCHMARK = runpy.run_path(osp.join(REPO_ROOT, 'tools', 'benchmark.py'))


def benchmark_request(*argv):
    options = BENCHMARK['build_parser']().parse_args([CONFIG, *argv])
    check_request(Config.fromfile(CONFIG), options)


@pytest.mark.parametrize('argv, message', [
    (['--out', '/nonexistent/x.json'], '--out /nonexistent/x.json: the folder /nonexistent does '
                                       'not exist'),
    (['--out', '/proc/x.json'], r'--out /proc/x.json: cannot write into /proc'),
    (['--out', REPO_ROOT], f'--out {REPO_ROOT} is a folder'),
    (['--threads', '-2'], '--threads -2: give a number of threads >= 1'),
    (['--threads', '0'], '--threads 0: give a number of threads >= 1'),
    (['--device', 'gpu'], '--device gpu: choose cpu, cuda or cuda:N'),
    (['--act-impl', 'triton'], '--act-impl triton chooses how the fused network computes'),
] + ([] if torch.cuda.is_available() else [
    (['--device', 'cuda'], '--device cuda: this PyTorch build or machine has no CUDA'),
    (['--precision', 'fp16', '--device', 'cpu'], '--precision fp16 on the CPU'),
    (['--precision', 'bf16', '--device', 'cpu'], '--precision bf16 on the CPU')]))
def test_benchmark_requests_it_cannot_serve_are_refused_before_any_work(argv, message):
    with pytest.raises(InputError, match=message):
        benchmark_request(*argv)


def test_benchmark_requests_that_act_pass():
    benchmark_request('--act-impl', 'torch', '--deploy', '--threads', '1')
    benchmark_request('--act-impl', 'torch', '--compare', '--precision', 'fp16',
                      '--backbone-only', '--device', 'cpu')


def test_test_dump_file_is_checked_before_the_test(tmp_path):
    with pytest.raises(InputError, match='--out /proc/x.pkl: cannot write into /proc'):
        build_test_runner(CONFIG, str(tmp_path / 'none.pth'), out='/proc/x.pkl')


@pytest.fixture(scope='module')
def training_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp('convert') / 'epoch_1.pth'
    model = MODELS.build(Config.fromfile(CONFIG).model)
    torch.save({'state_dict': model.state_dict(), 'optimizer': {'state': {}}}, path)
    return path


def test_convert_never_writes_over_its_source(training_checkpoint, tmp_path):
    before = training_checkpoint.read_bytes()
    for dst in (training_checkpoint, training_checkpoint.parent / '.' / 'epoch_1.pth'):
        with pytest.raises(InputError, match='is the checkpoint being converted'):
            convert_checkpoint(str(training_checkpoint), str(dst), force=True)
    (tmp_path / 'link.pth').symlink_to(training_checkpoint)
    with pytest.raises(InputError, match='is the checkpoint being converted'):
        convert_checkpoint(str(training_checkpoint), str(tmp_path / 'link.pth'), force=True)
    assert training_checkpoint.read_bytes() == before
    with pytest.raises(InputError, match=f'the destination {tmp_path} is a folder'):
        convert_checkpoint(str(training_checkpoint), str(tmp_path), force=True)


@pytest.mark.parametrize('opset, dynamo', [(5, False), (99, False), (21, False), (99, True)])
def test_opsets_the_exporter_does_not_write_are_refused(opset, dynamo):
    with pytest.raises(InputError, match=f'opset={opset}: the .* exporter writes opsets 7 to'):
        onnx_export.check_opset(opset, dynamo)
    onnx_export.check_opset(onnx_export.OPSET, dynamo)


def test_a_folder_named_like_the_onnx_file_is_refused_even_with_force(tmp_path):
    (tmp_path / 'x.onnx').mkdir()
    with pytest.raises(InputError, match='x.onnx is a folder; give a file name'):
        onnx_export.check_output_path(str(tmp_path / 'x.onnx'), force=True)


@pytest.mark.slow
@pytest.mark.parametrize('argv, message', [
    (['tools/benchmark.py', CONFIG, '--out', '/nonexistent/x.json'],
     'error: --out /nonexistent/x.json: the folder /nonexistent does not exist'),
    (['tools/export_onnx.py', CONFIG, 'OUT', '--opset', '5'], 'error: --opset 5: the legacy'),
    (['tools/convert_checkpoint.py', 'CKPT', 'CKPT', '--force'],
     'is the checkpoint being converted'),
])
def test_the_tools_print_one_line(tmp_path, training_checkpoint, argv, message):
    argv = [str(tmp_path / 'x.onnx') if a == 'OUT' else str(training_checkpoint) if a == 'CKPT'
            else a for a in argv]
    output = run(*argv, expect_ok=False)
    assert message in output and 'Traceback' not in output
    assert not (tmp_path / 'x.onnx').exists()


@pytest.fixture
def alarm():
    """A read that blocks (a FIFO) fails the test instead of hanging it."""
    signal.signal(signal.SIGALRM, lambda *_: pytest.fail('blocked reading a FIFO'))
    signal.alarm(60)
    yield
    signal.alarm(0)


def fifo_in_place_of(path):
    os.remove(path)
    os.mkfifo(path)
    return str(path)


@pytest.mark.parametrize('what', ['annotation file', 'image', 'test_evaluator.ann_file',
                                  'config file', 'checkpoint'])
def test_a_fifo_where_a_file_is_read_is_refused_before_reading(tmp_path, data_root, what,
                                                               training_checkpoint, alarm):
    """Fails on main: tools/test.py blocked forever on a FIFO as the annotation file or an
    image."""
    data = tmp_path / 'data'
    shutil.copytree(data_root, data)
    config, checkpoint = CONFIG, shutil.copy(training_checkpoint, tmp_path / 'epoch_1.pth')
    ann = data / 'annotations' / 'instances_val.json'
    options = dict(toy_data_options(f'{data}/'))
    if what == 'test_evaluator.ann_file':
        shutil.copy(ann, tmp_path / 'val.json')
        options['test_evaluator.ann_file'] = fifo_in_place_of(tmp_path / 'val.json')
    elif what == 'config file':
        config = tmp_path / 'config.py'
        os.mkfifo(config)
    else:
        fifo_in_place_of({'annotation file': ann, 'image': data / 'val' / '000001.png',
                          'checkpoint': checkpoint}[what])
    with pytest.raises(InputError, match=r'is a FIFO \(named pipe\), not a regular file; give a '
                                         r'file|is a FIFO \(named pipe\), not an image file'):
        build_test_runner(str(config), str(checkpoint), work_dir=str(tmp_path / 'work'),
                          cfg_options=options)


def test_an_onnx_file_that_is_a_fifo_is_refused(tmp_path, alarm):
    fifo = tmp_path / 'raw.onnx'
    os.mkfifo(fifo)
    with pytest.raises(InputError, match='ONNX file .*raw.onnx is a FIFO'):
        OnnxDetector(CONFIG, str(fifo))


@pytest.mark.parametrize('shape', [(-64, 64), (0, 32)])
def test_a_shape_without_pixels_is_refused(shape):
    """Fails on main for tools/get_flops.py: a RuntimeError of torch."""
    model = MODELS.build(Config.fromfile(CONFIG).model)
    with pytest.raises(InputError, match=rf'shape=\({shape[0]}, {shape[1]}\): height and width '
                                         rf'must be positive'):
        detector_complexity(model, shape)


def test_a_size_too_large_for_memory_is_refused_from_its_estimate(tmp_path):
    """Fails on main: export --shape 100000 100000 ran out of memory (a traceback, or the
    kernel's kill) instead of a refusal before work."""
    with pytest.raises(InputError, match=r"shape=\(100000, 100000\): the network's activations "
                                         r'alone would need about [\d,]+ GiB of memory, and '
                                         r'[\d.,]+ GiB are available'):
        onnx_export.export_onnx(CONFIG, None, str(tmp_path / 'x.onnx'), shape=(100000, 100000))
    model = MODELS.build(Config.fromfile(CONFIG).model)
    with pytest.raises(InputError, match=r'shape=\(100000, 100000\): the network'):
        detector_complexity(model, (100000, 100000))
    assert os.listdir(tmp_path) == []


def test_the_benchmark_refuses_a_size_too_large_for_memory_before_making_the_image():
    """Fails before issue 24 round two: the generated input was allocated first (a RuntimeError
    traceback, can't allocate memory), and the estimate's refusal came only after it."""
    output = run('tools/benchmark.py', CONFIG, '--shape', '100000', '100000', '--iters', '1',
                 expect_ok=False)
    last = output.strip().splitlines()[-1]
    assert last.startswith("error: --shape 100000 100000: the network's activations alone "
                           "would need about"), output[-2000:]
    assert 'Traceback' not in output


def test_dict_written_in_cfg_options_is_named():
    """Fails on main: custom_hooks=[dict(type=...)] arrived as a list of strings, and our hook
    check failed with an AttributeError."""
    with pytest.raises(InputError, match=r"custom_hooks in cfg_options=...: \"dict\(type='Empty"
                                         r"CacheHook'\)\" is a string, not a dict"):
        load_config(CONFIG, {'custom_hooks': ["dict(type='EmptyCacheHook')"]})


def test_the_benchmark_times_a_compiled_backbone_and_its_onnx_files():
    """Fails on main: --compile failed in the FLOPs count and the export, which trace the module
    and cannot enter torch.compile's wrapper (--compile --backend onnxruntime --int8). The
    'eager' backend wraps as the default one does, without compiling."""
    cfg = Config.fromfile(CONFIG)
    model = fuse_detector(randomize(MODELS.build(cfg.model)).eval())
    model.backbone = torch.compile(model.backbone, backend='eager')
    batches = [pseudo_batch((64, 96))]
    settings = Settings(iters=1, warmup=0, progress=False)
    fused = measure(model, batches, 'backbone', settings)
    result = measure_onnxruntime(model, batches, 'backbone', settings, fused, int8=True)
    assert fused['gflops'] > 0 and result['int8']['median_ms'] > 0
    assert hasattr(model.backbone, '_orig_mod')  # still compiled for the PyTorch rows


@pytest.mark.slow
def test_the_int8_benchmarks_refuse_an_untrusted_checkpoint_in_one_line(tmp_path):
    """Fails on main: refused, but with a traceback."""
    torch.save({'state_dict': {}, 'meta': RunsCode(tmp_path / 'pwned')}, tmp_path / 'bad.pth')
    output = run('benchmarks/int8_checkpoint_check.py', str(tmp_path / 'bad.pth'),
                 '--work-dir', str(tmp_path / 'work'), '--out', str(tmp_path / 'r.json'),
                 expect_ok=False)
    assert output.strip().splitlines()[-1].startswith('error: ') and 'could run code' in output
    assert 'Traceback' not in output and not (tmp_path / 'pwned').exists()


def test_export_usage_takes_one_output():
    """Fails before issue 24 round two: the usage line said `[CKPT] OUT.onnx [[CKPT] OUT.onnx
    ...]`, several outputs, where two pairs are refused."""
    parser = runpy.run_path(osp.join(REPO_ROOT, 'tools', 'export_onnx.py'))['build_parser']()
    usage = ' '.join(parser.format_usage().split())
    assert usage.endswith(' config [CKPT] OUT.onnx'), usage
    assert parser.parse_args(['c.py', 'a.pth', 'o.onnx']).files == ['a.pth', 'o.onnx']


def test_every_tools_help_is_its_whole_docstring():
    """Fails on main: the help was the docstring's first line, cut mid-sentence ("calibrated on
    the config's")."""
    for path in sorted(glob.glob(osp.join(REPO_ROOT, 'tools', '*.py'))
                       + glob.glob(osp.join(REPO_ROOT, 'benchmarks', '*.py'))):
        for call in ast.walk(ast.parse(open(path).read())):
            if isinstance(call, ast.Call) and getattr(call.func, 'attr', '') == 'ArgumentParser':
                description = {k.arg: k.value for k in call.keywords}['description']
                assert isinstance(description, ast.Constant) or (
                    isinstance(description, ast.Name) and description.id == '__doc__'), path


FLAG = re.compile(r'(?<![\w-])--[a-z]')


def _messages(path):
    """(line, text) of every string literal of a module but its docstrings."""
    tree = ast.parse(open(path).read())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in docstrings]


def test_no_library_message_names_a_command_line_flag():
    """deploy/, models/, engine/, apis and the modules they use speak to Python callers (and
    to MMDetection's tools, whose flags are not ours): arguments and config keys, not flags."""
    library = glob.glob(osp.join(REPO_ROOT, 'mmdet_vanillanet', '**', '*.py'), recursive=True)
    assert len(library) > 30
    found = [f'{osp.relpath(path, REPO_ROOT)}:{line}: {text!r}' for path in library
             for line, text in _messages(path) if FLAG.search(text)]
    assert not found, found


def test_the_library_names_arguments_and_the_tools_name_their_flags():
    errors = [InputError(Argument('keep_float', ['neck', 'head']), ': choose among ...'),
              output_exists('x.onnx'), InputError(Argument('shape', (16, 64)), ': too small'),
              InputError('no config: give one (', Argument('config'), ')')]
    assert [str(e) for e in errors] == [
        "keep_float=['neck', 'head']: choose among ...",
        'x.onnx exists; pass force=True to overwrite it', 'shape=(16, 64): too small',
        'no config: give one (config=...)']
    printed = []
    for err in errors:
        with pytest.raises(SystemExit) as exit_:
            with one_line_errors(flags={'shape': '--static'}):
                raise err
        printed.append(exit_.value.code)
    assert printed == ['error: --keep-float neck head: choose among ...',
                       'error: x.onnx exists; pass --force to overwrite it',
                       'error: --static 16 64: too small', 'error: no config: give one (--config)']


def test_a_failed_write_is_worded_for_the_tool():
    """Fails on main: make_toy_coco on a read-only disk spoke of checkpoints and --resume."""
    def printed(**kwargs):
        with pytest.raises(SystemExit) as exit_:
            with one_line_errors(**kwargs):
                raise OSError(errno.EROFS, 'Read-only file system', 'data/toy/train/0.png')
        return exit_.value.code

    assert printed() == ('error: cannot write data/toy/train/0.png (Read-only file system); '
                         'free some space or fix its permissions, or choose another place to '
                         'write')
    assert '--resume continues from the last one' in printed(remedy=TRAINING_REMEDY)


def test_cfg_options_without_a_value_is_argparses_error_line(capsys):
    """Fails on 675fa6e: MMEngine's DictAction raised a ValueError traceback (not enough values
    to unpack) for a KEY without =VALUE."""
    parser = argparse.ArgumentParser(prog='train.py')
    add_runner_args(parser)
    with pytest.raises(SystemExit) as info:
        parser.parse_args(['--cfg-options', 'model.backbone.lean_training'])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        'train.py: error: argument --cfg-options: model.backbone.lean_training has no value: '
        'write model.backbone.lean_training=VALUE (KEY=VALUE pairs, separated by spaces)')
    assert parser.parse_args(['--cfg-options', 'a.b=1']).cfg_options == {'a.b': 1}


@pytest.mark.skipif(torch.cuda.is_available(), reason='mixed precision trains on a GPU')
def test_amp_on_a_machine_without_a_gpu_is_refused_before_the_run(tmp_path):
    """Fails on 675fa6e: MMEngine's AssertionError traceback once the Runner built the
    optimizer."""
    with pytest.raises(InputError, match=r"^--amp: automatic mixed precision trains on a GPU "
                                         r"only \(MMEngine's AmpOptimWrapper: CUDA, NPU, MLU or "
                                         r"MUSA\), and this machine has cpu only; train without "
                                         r"it$"):
        prepare_train_run(CONFIG, work_dir=str(tmp_path / 'w'), amp=True)
    assert not (tmp_path / 'w').exists()
    with pytest.raises(InputError, match=r"^the config's optim_wrapper \(type='AmpOptimWrapper'"):
        prepare_train_run(CONFIG, work_dir=str(tmp_path / 'w'),
                          cfg_options={'optim_wrapper.type': 'AmpOptimWrapper'})


def test_a_resize_scale_beyond_any_input_is_named_before_the_run():
    """Fails on 675fa6e: a test-split Resize scale of 100000 failed in the test (a TypeError,
    or OpenCV's failed allocation of 30 GB)."""
    cfg = Config.fromfile(CONFIG)
    cfg.test_dataloader.dataset.pipeline[1].scale = (100000, 100000)
    with pytest.raises(InputError, match=r'^test_dataloader.dataset.pipeline.1 \(Resize\): '
                                         r'scale=\(100000, 100000\) resizes images to sides '
                                         r'outside 1 to 8192 pixels; set a scale in that range$'):
        check_dataset_paths(cfg, ('test_dataloader', ))
    cfg.train_dataloader.dataset.pipeline[2] = dict(type='RandomResize', scale=[(1333, 640),
                                                    (1333, 800)], ratio_range=(0.1, 8.0))
    with pytest.raises(InputError, match=r'pipeline.2 \(RandomResize\): .* with ratio_range up '
                                         r'to 8.0 resizes'):
        check_dataset_paths(cfg, ('train_dataloader', ))


def test_an_error_during_a_progress_bar_starts_its_own_line(data_root, tmp_path):
    """Fails on 675fa6e: the error was glued to the bar's last line ('ETA: 1serror: the image
    ...'): the calibration's bar ends its line before the error goes up."""
    folder = tmp_path / 'data'
    shutil.copytree(data_root, folder)
    last = int(np.random.default_rng(0).permutation(6)[-1])  # read last: the bar is drawn
    (folder / 'val' / f'{last:06d}.png').write_bytes(b'garbage')
    code = ('import sys; sys.path.insert(0, "tests")\n'
            'from helpers import toy_data_config\n'
            'from mmdet_runsafe.cli import one_line_errors\n'
            'from mmdet_vanillanet.deploy.calibration import calibration_inputs\n'
            'with one_line_errors():\n'
            f'    calibration_inputs(toy_data_config("{folder}/"), "val", num=6, progress=True)')
    done = subprocess.run([sys.executable, '-c', code], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 1 and 'ETA' in done.stdout and done.stdout.endswith('\n'), \
        done.stdout[-500:]
    assert done.stderr.strip().splitlines()[-1].startswith(f'error: the image {folder}')


def test_a_file_named_onnx_that_is_not_one_is_named_as_the_file(data_root, tmp_path):
    """Fails on 675fa6e: with --checkpoint the error spoke of the checkpoint (it names the
    checkpoint an ONNX file was exported from), without it of a checkpoint that cannot be
    read."""
    fake = tmp_path / 'fake.onnx'
    fake.write_text('not a model')
    checkpoint = str(save_toy_checkpoint(tmp_path / 'toy.pth'))
    for onnx_checkpoint, given in ((checkpoint, f' with --checkpoint {checkpoint}'), (None, '')):
        with pytest.raises(InputError, match=re.escape(
                f'{fake} is a file of another format, not an ONNX model: tools/test.py CONFIG '
                f'FILE.onnx --checkpoint CKPT tests a file exported by tools/export_onnx.py '
                f'--part raw; give an exported file{given}, or a checkpoint without '
                f'--checkpoint')):
            build_test_runner(toy_test_config(data_root), str(fake), work_dir=str(tmp_path / 'w'),
                              onnx_checkpoint=onnx_checkpoint)


def test_a_work_dir_that_is_a_file_is_named_as_one(tmp_path):
    """Fails on 675fa6e: 'cannot write into the work dir X (File exists)'."""
    (tmp_path / 'notes').write_text('mine')
    for work_dir, what in ((tmp_path / 'notes', 'is a file'),
                           (tmp_path / 'notes' / 'run', f'is in {tmp_path / "notes"}, a file')):
        with pytest.raises(InputError, match=re.escape(
                f'the work dir {work_dir} {what}, not a folder; choose another with '
                f'--work-dir')):
            require_writable(str(work_dir))
    assert (tmp_path / 'notes').read_text() == 'mine'


@pytest.mark.slow
def test_a_refused_training_run_leaves_its_work_dir_unlocked(data_root, tmp_path):
    """Fails on 675fa6e: a run refused after taking the lock (here: --resume finds no readable
    checkpoint) left its details in run.lock, and the next run warned that its holder 'is no
    longer alive; taking the work dir over'."""
    (tmp_path / 'epoch_1.pth').write_bytes(b'PK\x03\x04 cut short')
    output = train(tmp_path, data_root, '--resume', expect_ok=False)
    assert output.strip().splitlines()[-1].startswith(
        "error: --resume: none of the run's checkpoints is readable"), output[-2000:]
    assert (tmp_path / 'run.lock').read_text().strip() == ''
