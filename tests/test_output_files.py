"""Nothing a user made is lost, replaced or written through (issue 24 items 2-5): an output that
is one of the command's inputs is refused even with --force; the file a tool writes goes into a
new file of its own (a unique name, created exclusively) renamed into place, so that a user's
OUT.onnx.partial, a symbolic link beside or at the output, and a file that appears meanwhile
are left as they were; an existing --out of the benchmark is refused as tools/test.py refuses
it; SIGTERM and Ctrl-C leave no file behind and print one line; outputs get the user's umask."""
import os
import signal
import subprocess
import sys
import time

import pytest
from test_one_line_errors import benchmark_request

from helpers import (
    CONFIG,
    REPO_ROOT,
    file_size_limit,
    run,
    save_toy_checkpoint,
    toy_options,
)
from mmdet_runsafe.errors import InputError
from mmdet_runsafe.output_paths import (
    check_new_output_file,
    check_show_dir,
    new_file_for,
    write_text,
)
from mmdet_runsafe.serialization import safe_load
from mmdet_vanillanet.apis import convert_checkpoint, export_onnx, quantize_onnx
from vanillanet_toolkit.onnx_eval import toy_raw_file
from vanillanet_toolkit.runs import build_test_runner

MINE = b'the user\'s own bytes'


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_quantize_refuses_its_own_input_as_output_even_with_force(exported):
    """Fails on main: the fp32 input was replaced by its INT8 version."""
    cfg, _, raw = exported
    before = open(raw, 'rb').read()
    with pytest.raises(InputError, match='is a file this command reads'):
        quantize_onnx(cfg, raw, raw, num_images=2, force=True)
    os.link(raw, f'{raw}.hardlink.onnx')
    with pytest.raises(InputError, match='is a file this command reads'):
        quantize_onnx(cfg, raw, f'{raw}.hardlink.onnx', num_images=2, force=True)
    os.remove(f'{raw}.hardlink.onnx')
    assert open(raw, 'rb').read() == before


def test_export_refuses_its_checkpoint_as_output(exported, tmp_path):
    cfg, checkpoint, _ = exported
    renamed = tmp_path / 'model.onnx'  # the checkpoint under another name (a hard link)
    os.link(checkpoint, renamed)
    with pytest.raises(InputError, match='is a file this command reads'):
        export_onnx(cfg, str(renamed), str(renamed), force=True)
    assert open(checkpoint, 'rb').read() == renamed.read_bytes()


def test_a_users_partial_file_and_links_beside_the_output_are_kept(exported, tmp_path):
    """Fails on main: OUT.onnx.partial was the export's own name: a user's file of that name
    was deleted, and a link of that name was written through (its target replaced)."""
    cfg, checkpoint, _ = exported
    out = tmp_path / 'raw.onnx'
    (tmp_path / 'raw.onnx.partial').write_bytes(MINE)
    export_onnx(cfg, checkpoint, str(out), part='raw', shape=(96, 96))
    assert (tmp_path / 'raw.onnx.partial').read_bytes() == MINE
    target = tmp_path / 'precious.bin'
    target.write_bytes(MINE)
    (tmp_path / 'raw.onnx.partial').unlink()
    (tmp_path / 'raw.onnx.partial').symlink_to(target)
    export_onnx(cfg, checkpoint, str(out), part='raw', shape=(96, 96), force=True)
    assert target.read_bytes() == MINE and (tmp_path / 'raw.onnx.partial').is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ['precious.bin', 'raw.onnx',
                                                         'raw.onnx.partial']


def test_an_output_that_is_a_symbolic_link_is_not_written_through(exported, tmp_path):
    """Fails on main for the converter: --force to a link rewrote the link's target in place."""
    cfg, checkpoint, raw = exported
    target = tmp_path / 'precious.pth'
    target.write_bytes(MINE)
    link = tmp_path / 'link.pth'
    link.symlink_to(target)
    dangling = tmp_path / 'dangling.onnx'
    dangling.symlink_to(tmp_path / 'nowhere.onnx')
    calls = [lambda: convert_checkpoint(checkpoint, str(link), force=True),
             lambda: export_onnx(cfg, checkpoint, str(dangling), force=True),
             lambda: quantize_onnx(cfg, raw, str(dangling), force=True)]
    for call in calls:
        with pytest.raises(InputError, match='is a symbolic link .* do not write through'):
            call()
    with pytest.raises(InputError, match='is a symbolic link'):
        benchmark_request('--out', str(dangling))
    assert target.read_bytes() == MINE and not (tmp_path / 'nowhere.onnx').exists()


def test_the_benchmark_refuses_an_existing_out_file(tmp_path):
    """Fails on main: the report replaced the file silently (tools/test.py --out refused)."""
    existing = tmp_path / 'report.json'
    existing.write_bytes(MINE)
    with pytest.raises(FileExistsError, match='--out .*report.json exists; remove it or choose'):
        benchmark_request('--out', str(existing))
    with pytest.raises(InputError, match='is a file this command reads'):
        benchmark_request('--out', CONFIG)
    assert existing.read_bytes() == MINE


def test_a_new_file_never_replaces_one_that_appeared_meanwhile(tmp_path):
    out = tmp_path / 'report.json'
    with pytest.raises(FileExistsError, match='appeared while it was being written'):
        with new_file_for(str(out)) as partial:
            open(partial, 'w').write('ours')
            out.write_bytes(MINE)  # another process, meanwhile
    assert out.read_bytes() == MINE and os.listdir(tmp_path) == ['report.json']
    with new_file_for(str(out), replace=True) as partial:
        open(partial, 'w').write('ours')
    assert out.read_text() == 'ours' and os.listdir(tmp_path) == ['report.json']
    with pytest.raises(RuntimeError):
        with new_file_for(str(tmp_path / 'x.onnx')):
            raise RuntimeError('the work failed')
    assert os.listdir(tmp_path) == ['report.json']


def test_outputs_get_the_users_umask(exported, tmp_path):
    """Fails on main for the INT8 file: 0600 (a temporary file renamed), others 0644."""
    cfg, checkpoint, raw = exported
    quantized = tmp_path / 'int8.onnx'
    quantize_onnx(cfg, raw, str(quantized), num_images=2, progress=False)
    converted = tmp_path / 'deploy.pth'
    convert_checkpoint(checkpoint, str(converted), config=cfg)
    for path in (quantized, converted):
        assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask(), path


def start(*argv):
    return subprocess.Popen([sys.executable, *argv], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env={k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'})


def signal_once(process, ready, signum):
    """Send ``signum`` once ``ready()`` is true (the tool's work under way); its output."""
    deadline = time.time() + 300
    while not ready():
        assert process.poll() is None and time.time() < deadline, process.communicate()[0]
        time.sleep(0.02)
    process.send_signal(signum)
    return process.communicate(timeout=120)[0]


def signal_once_writing(process, folder, signum):
    """Send ``signum`` once the tool's new file exists in ``folder``."""
    return signal_once(process, lambda: any(name.endswith('.partial')
                                            for name in os.listdir(folder)), signum)


@pytest.mark.slow
@pytest.mark.parametrize('tool, signum', [('export', signal.SIGTERM), ('quantize', signal.SIGTERM),
                                          ('quantize', signal.SIGINT)])
def test_sigterm_and_ctrl_c_leave_no_file_and_print_one_line(exported, tmp_path, data_root,
                                                             tool, signum):
    """Fails on main: SIGTERM left tmpXXXX.onnx (quantize) or OUT.onnx.partial (export) beside
    the output; Ctrl-C printed a KeyboardInterrupt traceback. The sizes keep the tool busy for
    seconds once its file exists."""
    _, _, raw = exported
    out = tmp_path / 'out.onnx'
    if tool == 'export':
        argv = ['tools/export_onnx.py', CONFIG, str(out), '--part', 'raw', '--shape', '640', '640']
    else:
        scale = 'test_dataloader.dataset.pipeline.1.scale=(1600,1600)'
        argv = ['tools/quantize_onnx.py', CONFIG, raw, str(out), '--num-images', '16',
                '--cfg-options', f'train_dataloader.dataset.data_root={data_root}', scale]
    output = signal_once_writing(start(*argv), tmp_path, signum)
    name = signal.Signals(signum).name
    assert output.strip().splitlines()[-1] == (f'error: interrupted by {name}; no file was left '
                                               f'half-written'), output[-2000:]
    assert 'Traceback' not in output and os.listdir(tmp_path) == []


@pytest.mark.slow
@pytest.mark.parametrize('tool', ['convert', 'export', 'quantize'])
def test_a_full_disk_is_one_line_naming_the_file_and_leaves_none(exported, tmp_path, data_root,
                                                                 tool):
    """Fails on main: the converter ended in torch's "[enforce fail at inline_container.cc:672]"
    (7 frames), the exporter and the quantizer in "cannot write a file (...)"."""
    _, checkpoint, raw = exported
    out = tmp_path / ('deploy.pth' if tool == 'convert' else 'out.onnx')
    argv = {'convert': ['tools/convert_checkpoint.py', checkpoint, str(out), '--config', CONFIG],
            'export': ['tools/export_onnx.py', CONFIG, checkpoint, str(out), '--part', 'raw',
                       '--shape', '96', '96'],
            'quantize': ['tools/quantize_onnx.py', CONFIG, raw, str(out), '--num-images', '2',
                         '--cfg-options', f'train_dataloader.dataset.data_root={data_root}']}
    # Each output is over 1 MiB (the toy detector's weights); nothing else the tool writes is.
    output = run(*argv[tool], expect_ok=False, preexec_fn=file_size_limit(2 ** 20))
    assert output.strip().splitlines()[-1].startswith(
        f'error: cannot write {out} (File too large); free some space'), output[-2000:]
    assert 'Traceback' not in output and os.listdir(tmp_path) == []


@pytest.mark.slow
def test_the_tools_refuse_in_one_line(exported, tmp_path):
    _, checkpoint, raw = exported
    output = run('tools/quantize_onnx.py', CONFIG, raw, raw, '--force', expect_ok=False)
    assert output.strip().splitlines()[-1].startswith('error: the output file') and \
        'is a file this command reads' in output and 'Traceback' not in output
    existing = tmp_path / 'r.json'
    existing.write_bytes(MINE)
    output = run('tools/benchmark.py', CONFIG, '--out', str(existing), expect_ok=False)
    assert output.strip().splitlines()[-1] == (f'error: --out {existing} exists; remove it or '
                                               f'choose another name')
    assert existing.read_bytes() == MINE


def test_the_test_tools_dump_file_is_no_link_and_no_input(exported, tmp_path):
    _, checkpoint, _ = exported
    link = tmp_path / 'out.pkl'
    link.symlink_to(checkpoint)
    with pytest.raises(InputError, match='is a symbolic link'):
        build_test_runner(CONFIG, checkpoint, out=str(link))
    renamed = tmp_path / 'model.pkl'
    os.link(checkpoint, renamed)
    with pytest.raises(InputError, match='is a file this command reads'):
        build_test_runner(CONFIG, str(renamed), out=str(renamed))


def test_pictures_never_replace_the_datasets_images(data_root, tmp_path):
    """MMDetection's visualization hook paints each test image into WORK_DIR/<timestamp>/
    SHOW_DIR under the image's file name, and takes an absolute SHOW_DIR (or one that climbs
    out with ..) as it is: --show-dir DATA/val replaced the dataset's images with pictures."""
    images = os.path.join(data_root, 'val')
    before = {name: open(os.path.join(images, name), 'rb').read()
              for name in os.listdir(images)}
    work = tmp_path / 'work'
    work.mkdir()
    for show_dir in (images, os.path.relpath(images, work / '00000000_000000')):
        with pytest.raises(InputError, match=f'^--show-dir {show_dir}: the pictures are written '
                           f'under the test images\' file names into {images}, which is not a '
                           f'new or empty folder'):
            check_show_dir(str(work), show_dir)
    output = run('tools/test.py', CONFIG, str(save_toy_checkpoint(tmp_path / 'toy.pth')),
                 '--work-dir', str(work), '--show-dir', images, '--cfg-options',
                 *toy_options(data_root), expect_ok=False)
    assert output.strip().splitlines()[-1].startswith(f'error: --show-dir {images}: ')
    assert {name: open(os.path.join(images, name), 'rb').read()
            for name in os.listdir(images)} == before
    # A relative folder (new, in the run's log folder), and a new or empty absolute one, take
    # the pictures.
    (tmp_path / 'empty').mkdir()
    for show_dir in ('pictures', str(tmp_path / 'new'), str(tmp_path / 'empty')):
        check_show_dir(str(work), show_dir)


def test_a_scripts_default_result_replaces_a_link_and_others_are_refused(tmp_path):
    """Fails before issue 24 round two: the benchmarks/ scripts wrote --out with a plain open,
    replacing a file of the user's silently and writing through a link. Their own default
    output (a committed result, regenerated) is renamed over a link; another that exists is
    refused."""
    target = tmp_path / 'their_file'
    target.write_bytes(MINE)
    default = tmp_path / 'results.json'
    default.symlink_to(target)
    replace = check_new_output_file(str(default), '--out', default=str(default))
    write_text(str(default), 'new', replace)
    assert target.read_bytes() == MINE and not default.is_symlink()
    assert default.read_text() == 'new'
    with pytest.raises(FileExistsError, match='--out .*their_file exists; remove it or choose'):
        check_new_output_file(str(target), '--out', default=str(default))
    link = tmp_path / 'link.json'
    link.symlink_to(target)
    with pytest.raises(InputError, match='is a symbolic link'):
        check_new_output_file(str(link), '--out', default=str(default))


@pytest.mark.parametrize('script', ['int8_accuracy.py', 'int8_checkpoint_check.py',
                                    'weight_growth.py'])
def test_the_benchmark_scripts_refuse_an_existing_out_in_one_line(tmp_path, script):
    """Fails before issue 24 round two: the file was replaced at the end of the run."""
    existing = tmp_path / 'r.json'
    existing.write_bytes(MINE)
    args = [] if script == 'weight_growth.py' else [str(tmp_path / 'model.pth')]
    output = run(f'benchmarks/{script}', *args, '--out', str(existing), expect_ok=False)
    assert output.strip().splitlines()[-1] == (f'error: --out {existing} exists; remove it or '
                                               f'choose another name'), output[-2000:]
    assert existing.read_bytes() == MINE


def test_the_int8_scripts_raw_file_never_replaces_a_users_file(exported, data_root, tmp_path):
    """Fails before issue 24 round two: toy_raw_file exported over WORK_DIR/raw_fp32.onnx."""
    _, checkpoint, _ = exported
    (tmp_path / 'raw_fp32.onnx').write_bytes(MINE)
    _, path = toy_raw_file(CONFIG, data_root, checkpoint, str(tmp_path))
    assert (tmp_path / 'raw_fp32.onnx').read_bytes() == MINE
    assert os.path.dirname(os.path.dirname(path)) == str(tmp_path) and os.path.isfile(path)


@pytest.mark.slow
@pytest.mark.parametrize('signum', [signal.SIGINT, signal.SIGTERM])
def test_sigterm_and_ctrl_c_stop_training_in_one_line_keeping_its_checkpoints(data_root,
                                                                              tmp_path, signum):
    """Fails before issue 24 round two: tools/train.py printed a KeyboardInterrupt traceback
    (and SIGTERM ended it without clean-up). Stopped during epoch 2 (epoch_1.pth is in place):
    one line, the checkpoint complete, no partial file left."""
    process = start('tools/train.py', CONFIG, '--work-dir', str(tmp_path), '--cfg-options',
                    *toy_options(data_root, epochs=4))
    output = signal_once(process, (tmp_path / 'epoch_1.pth').exists, signum)
    name = signal.Signals(signum).name
    assert output.strip().splitlines()[-1] == (
        f'error: interrupted by {name}; complete checkpoints are kept (each is written under a '
        f'name of its own and renamed into place): --resume continues from the last one'), \
        output[-2000:]
    assert 'Traceback' not in output and process.returncode == 128 + signum
    assert not list(tmp_path.glob('*.partial'))
    assert safe_load(str(tmp_path / 'epoch_1.pth'))['meta']['epoch'] == 1


@pytest.mark.slow
def test_ctrl_c_stops_a_test_run_in_one_line(exported, data_root, tmp_path):
    """Fails before issue 24 round two: tools/test.py printed a KeyboardInterrupt traceback.
    Large images keep the test busy for seconds once its log folder exists."""
    _, checkpoint, _ = exported
    process = start('tools/test.py', CONFIG, checkpoint, '--work-dir', str(tmp_path),
                    '--cfg-options', *toy_options(data_root),
                    'test_dataloader.dataset.pipeline.1.scale=(1600,1600)')
    output = signal_once(process, lambda: any(p.is_dir() for p in tmp_path.iterdir()),
                         signal.SIGINT)
    assert output.strip().splitlines()[-1] == ('error: interrupted by SIGINT; the test was not '
                                               'finished and printed no metrics'), output[-2000:]
    assert 'Traceback' not in output and process.returncode == 130
