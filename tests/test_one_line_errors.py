"""Bad input to the tools is one line, before any work (issue 17 items 6-10): output paths that
are folders, missing or unwritable; opsets the exporter does not write; thread counts, devices
and precisions this build cannot run; flags that cannot act; a conversion onto its own source.
The checks are tested here as functions, and each tool once as the user runs it. A library
function's error names its arguments as the caller wrote them, never a command-line flag; the
tools word them as their flags (issue 23)."""
import ast
import glob
import os.path as osp
import re
import runpy

import pytest
import torch
from mmdet.registry import MODELS
from mmengine.config import Config

from helpers import CONFIG, REPO_ROOT, run
from mmdet_vanillanet.apis import convert_checkpoint
from mmdet_vanillanet.deploy import onnx_export
from mmdet_vanillanet.errors import Argument, InputError, output_exists
from mmdet_vanillanet.toolkit.benchmark import check_request
from mmdet_vanillanet.toolkit.cli import one_line_errors
from mmdet_vanillanet.toolkit.runs import build_test_runner

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


FLAG = re.compile(r'(?<![\w-])--[a-z]')
# Our tools' own code, which speaks in their flags.
TOOLS_CODE = osp.join(REPO_ROOT, 'mmdet_vanillanet', 'toolkit')


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
    library = [p for p in glob.glob(osp.join(REPO_ROOT, 'mmdet_vanillanet', '**', '*.py'),
                                    recursive=True)
               if not p.startswith(TOOLS_CODE)]
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
