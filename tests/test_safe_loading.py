"""Loading a checkpoint changes nothing in the loading process but the objects it returns: the
types the plugin allow-lists for weights_only loading (the message hub buffers, numpy data)
load into new objects only, crafted files are refused, and resume still works; a checkpoint of
MMEngine's own CheckpointHook (a config without our hooks) is tested, resumed and converted by
our tools, without running anything from it."""
import io
import json
import os
import os.path as osp
import pickle
import subprocess
import sys
import zipfile

import mmdet
import numpy as np
import pytest
import torch
from mmdet.registry import HOOKS
from mmengine.logging import MessageHub
from mmengine.logging.history_buffer import HistoryBuffer

from helpers import (
    REPO_ROOT,
    config_without_runtime_hooks,
    first_logged_iter_of_last_run,
    run,
    toy_options,
)
from mmdet_runsafe.errors import CheckpointError
from mmdet_runsafe.serialization import WeightsOnlyHistoryBuffer, safe_load

MULTIARRAY = (getattr(np, '_core', None) or np.core).multiarray  # numpy 2 renamed core


class Craft:
    """Pickles as ``callable(*args)`` followed by ``__setstate__(state)``: what a crafted file
    can hold, built with the real classes so that the file names them as MMEngine's would."""

    def __init__(self, *reduced):
        self.reduced = reduced

    def __reduce__(self):
        return self.reduced


HISTORY = dict(max_length=10, _log_history=np.array([1.0, 3.0]), _count_history=np.array([1, 1]))
# A dtype whose object field lies over the array's raw bytes: the bytes become a pointer.
OBJECT_FIELD = Craft(np.dtype, ([('a', 'O')], False, True),
                     (3, '|', None, ('a',), {'a': (np.dtype('O'), 0)}, 8, 1, 0))
CRAFTED = {
    # MMEngine's HistoryBuffer merges the file's statistics methods into its class-wide dict.
    'history_buffer_methods': Craft(HistoryBuffer, (), {'statistics_methods': {'mean': 'x'}}),
    'our_buffer_methods': Craft(WeightsOnlyHistoryBuffer, (),
                                {**HISTORY, 'statistics_methods': {'mean': 'x'}}),
    'our_buffer_class_attribute': Craft(WeightsOnlyHistoryBuffer, (),
                                        {**HISTORY, '_statistics_methods': {'mean': 'x'}}),
    'our_buffer_other_history': Craft(WeightsOnlyHistoryBuffer, (),
                                      {**HISTORY, '_log_history': 'x'}),
    # Calling the class runs HistoryBuffer.__init__, which registers the default methods.
    'our_buffer_called': Craft(WeightsOnlyHistoryBuffer, ([1.0], [1], 5)),
    # np.dtype('f8', copy=False) is numpy's shared float64 descriptor: the state must not reach it.
    'shared_dtype_byte_order': Craft(np.dtype, ('f8', False, False),
                                     (3, '>', None, None, None, -1, -1, 0)),
    'shared_dtype_flags': Craft(np.dtype, ('f8', False, False),
                                (3, '<', None, None, None, -1, -1, 0x3f)),
    'object_field_over_bytes': Craft(MULTIARRAY._reconstruct, (np.ndarray, (0,), b'b'),
                                     (1, (1,), OBJECT_FIELD, False, b'A' * 8)),
    'object_array_from_buffer': Craft(np.ndarray, ((1,), 'O', b'A' * 8)),
    'object_scalar': Craft(MULTIARRAY.scalar, (np.dtype('O'), 'x')),
    'array_beyond_its_bytes': Craft(MULTIARRAY._reconstruct, (np.ndarray, (0,), b'b'),
                                    (1, (1000,), np.dtype('f8'), False, b'A' * 8)),
    'numpy_dtype_class': Craft(np.dtypes.Float64DType, ()),
    # MMEngine writes a buffer's statistics methods as getattr(HistoryBuffer, 'min'): that
    # getattr reads those four methods of that class, nothing else.
    'getattr_of_another_attribute': Craft(getattr, (HistoryBuffer, 'register_statistics')),
    'getattr_of_another_object': Craft(getattr, (np.dtype, 'min')),
    'mmengine_buffer_other_method': Craft(HistoryBuffer, (),
                                          {**HISTORY, 'statistics_methods': {'mean': Craft(
                                              getattr, (HistoryBuffer, 'max'))}}),
}
LOADED_FRESH = {'our_buffer_called', 'shared_dtype_byte_order'}
# What MMEngine's own CheckpointHook writes loads through our loaders only (safe_load).
LOADED_BY_OURS = {'written_by_mmengine'}


def opcodes(obj) -> bytes:
    """The pickle opcodes that build ``obj``, to splice into a hand-written pickle."""
    return pickle.dumps(obj, protocol=2)[2:-1]  # without PROTO and STOP


def array_built_twice() -> bytes:
    """{'t': a tensor made from array A, 'a': A given a second state}: numpy's second
    __setstate__ frees the data that the tensor goes on reading."""
    n = 4000  # numpy keeps a reference to the file's bytes beyond 1000
    first = (1, (n,), np.dtype('f8'), False, np.full(n, 7.0).tobytes())
    second = (1, (1,), np.dtype('f8'), False, np.zeros(1).tobytes())
    return (b'\x80\x02}' + opcodes('t')  # PROTO 2, EMPTY_DICT
            + b'ctorch._utils\n_rebuild_device_tensor_from_numpy\n('  # GLOBAL, MARK
            + opcodes(Craft(MULTIARRAY._reconstruct, (np.ndarray, (0,), b'b')))
            + b'q\xc8' + opcodes(first) + b'b'  # BINPUT 200 (A), its state, BUILD
            + opcodes(torch.float64) + opcodes('cpu') + b'\x89tRs'  # False, TUPLE, REDUCE
            + opcodes('a') + b'h\xc8' + opcodes(second) + b'bs.')  # BINGET 200, BUILD again


def save_pickle(pickled: bytes, path):
    """A torch checkpoint file whose data.pkl is ``pickled``."""
    empty = io.BytesIO()
    torch.save({}, empty)
    with zipfile.ZipFile(empty) as src, zipfile.ZipFile(path, 'w') as dst:
        for name in src.namelist():
            dst.writestr(name, pickled if name.endswith('/data.pkl') else src.read(name))


PROBE = '''
import json, pickle, sys
import numpy as np, torch
import mmdet_runsafe.hooks
from mmengine.logging.history_buffer import HistoryBuffer
from mmdet_runsafe.errors import CheckpointError
from mmdet_runsafe.serialization import safe_load

def state_of(obj):
    return [repr(sorted((k, repr(v)) for k, v in getattr(obj, '__dict__', {}).items())),
            repr(getattr(obj, '__defaults__', None))]

def snapshot():
    """Every allow-listed class and function, MMEngine's registry, numpy's shared dtypes."""
    allowed = [g[0] if isinstance(g, tuple) else g for g in torch.serialization.get_safe_globals()]
    found = {'allow-list': sorted(map(repr, torch.serialization.get_safe_globals()))}
    dtypes = [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith('DType')]
    found.update({repr(o): state_of(o)
                  for o in [HistoryBuffer, np.ndarray, np.dtype, *dtypes, *allowed]})
    found['registry'] = [id(HistoryBuffer._statistics_methods),
                         repr(HistoryBuffer._statistics_methods)]
    for code in [*np.typecodes['All'], 'O', 'S', 'U', 'V', 'M', 'm']:
        d = np.dtype(code)
        found['dtype ' + code] = [id(d), d.str, d.byteorder, d.flags, d.itemsize, d.alignment,
                                  repr(d.metadata), repr(d.fields), d.names, d.hasobject]
    return found

def outcome(load, path):
    try:
        repr(load(path))  # touches everything the file gave
        return 'loaded'
    except (CheckpointError, pickle.UnpicklingError):
        return 'refused'
    except Exception as err:
        return f'{type(err).__name__}: {err}'

before = snapshot()
results = {}
for path in sys.argv[1:]:
    results[path] = [outcome(safe_load, path),
                     outcome(lambda p: torch.load(p, weights_only=True), path)]
after = snapshot()
print(json.dumps(dict(results=results, changed=sorted(k for k in before
                                                      if before[k] != after.get(k)),
                      registry=after['registry'][1])))
'''


def probe(*paths):
    """Load ``paths`` in a fresh interpreter that imported the plugin, as MMDetection's tools
    do: a file cannot meet state an earlier test left, and a crash is seen as one."""
    done = subprocess.run([sys.executable, '-c', PROBE, *map(str, paths)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def hub_checkpoint(name, ours=True):
    """A checkpoint's message hub as a run writes it, with WeightsOnlyCheckpointHook (``ours``)
    or MMEngine's CheckpointHook alone: buffers and MMEngine's numpy eta."""
    hub = MessageHub.get_instance(name)
    for value in (1.0, 3.0, 2.0):
        hub.update_scalar('train/loss', value)
    hub.update_info('eta', np.float64(12.5))
    checkpoint = {'message_hub': hub.state_dict()}
    if ours:
        HOOKS.build(dict(type='WeightsOnlyCheckpointHook')).before_save_checkpoint(
            None, checkpoint)
    return checkpoint


def test_a_crafted_file_changes_no_class_attribute_and_no_numpy_dtype(tmp_path):
    paths = {}
    for name, obj in CRAFTED.items():
        paths[name] = tmp_path / f'{name}.pth'
        torch.save({'state_dict': {}, 'x': obj}, paths[name])
    paths['array_built_twice'] = tmp_path / 'twice.pth'
    save_pickle(array_built_twice(), paths['array_built_twice'])
    paths['written_by_a_run'] = tmp_path / 'run.pth'
    torch.save(hub_checkpoint('test_crafted'), paths['written_by_a_run'])
    paths['written_by_mmengine'] = tmp_path / 'mmengine.pth'
    torch.save(hub_checkpoint('test_crafted_mmengine', ours=False), paths['written_by_mmengine'])

    found = probe(*paths.values())
    assert found['changed'] == []  # the allow-list included
    assert found['registry'] == '{}'  # not even MMEngine's defaults were registered
    outcomes = {name: found['results'][str(path)] for name, path in paths.items()}
    expected = {name: ['loaded' if name in LOADED_FRESH | {'written_by_a_run'} else 'refused'] * 2
                for name in paths}
    expected.update({name: ['loaded', 'refused'] for name in LOADED_BY_OURS})
    assert outcomes == expected


class RunsShell:
    """Pickles as os.system(command): unpickled without weights_only, it runs the command."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_a_file_that_would_run_a_shell_command_is_refused_in_one_line(tmp_path):
    marker = tmp_path / 'ran'
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {}, 'message_hub': RunsShell(f'touch {marker}')}, path)
    with pytest.raises(CheckpointError) as refused:
        safe_load(str(path))
    message = str(refused.value)
    assert message.startswith(f'{path} holds Python objects beyond tensors')
    assert f'(torch said: Trying to load unsupported GLOBAL {os.system.__module__}.system' \
        in message
    assert '\n' not in message and not marker.exists()


def test_a_refused_file_is_one_line_naming_what_was_refused(tmp_path):
    torch.save({'x': CRAFTED['object_field_over_bytes']}, tmp_path / 'c.pth')
    with pytest.raises(CheckpointError) as refused:
        safe_load(str(tmp_path / 'c.pth'))
    message = str(refused.value)
    assert "(torch said: numpy dtype [('a', 'O')] is refused" in message
    assert 'unsafe_load=True' in message and '\n' not in message and '\033' not in message


@pytest.mark.parametrize('array', [
    np.array([1.5, -2.0]), np.arange(6, dtype='>i4').reshape(2, 3),
    np.asfortranarray(np.arange(6.0).reshape(2, 3)), np.array(True), np.arange(3, dtype=np.uint16),
    np.array([1 + 2j], np.complex64), np.array([0.5], np.float16)])
def test_plain_numpy_arrays_and_scalars_load_as_numpy_unpickles_them(array, tmp_path):
    scalar = array.reshape(-1)[:1].sum()
    expected = pickle.loads(pickle.dumps(array))  # numpy's own (big-endian becomes native)
    torch.save({'array': array, 'scalar': scalar}, tmp_path / 'c.pth')
    loaded = torch.load(tmp_path / 'c.pth', weights_only=True)
    assert np.array_equal(loaded['array'], array) and loaded['array'].dtype == expected.dtype
    assert loaded['array'].flags.f_contiguous == array.flags.f_contiguous
    assert type(loaded['scalar']) is type(scalar) and loaded['scalar'] == scalar
    # Written again, by torch or pickle, it is a plain ndarray, which loads again.
    assert type(pickle.loads(pickle.dumps(loaded['array']))) is np.ndarray
    torch.save(loaded, tmp_path / 'again.pth')
    assert np.array_equal(torch.load(tmp_path / 'again.pth', weights_only=True)['array'], array)


RESUME = '''
import json, sys
import numpy as np, torch
import mmdet_runsafe.hooks
from mmdet.registry import HOOKS
from mmengine.logging import MessageHub
from mmengine.logging.history_buffer import HistoryBuffer
from mmdet_runsafe.serialization import safe_load

# As Runner.resume, under MMDetection's tools (torch.load) or ours (safe_load)
load = safe_load if sys.argv[3] == 'safe_load' else lambda p: torch.load(p, weights_only=True)
hub = MessageHub.get_instance('resumed')
hub.load_state_dict(load(sys.argv[1])['message_hub'])
loss = hub.get_scalar('train/loss')
smoothed = [loss.mean(2), loss.statistics('mean', 10), loss.current()]  # as the LoggerHook
hub.update_scalar('train/loss', 6.0)
checkpoint = {'message_hub': hub.state_dict()}  # the resumed run saves again
HOOKS.build(dict(type='WeightsOnlyCheckpointHook')).before_save_checkpoint(None, checkpoint)
torch.save(checkpoint, sys.argv[2])
again = torch.load(sys.argv[2], weights_only=True)['message_hub']['log_scalars']['train/loss']
print(json.dumps(dict(smoothed=[float(v) for v in smoothed], eta=repr(hub.get_info('eta')),
                      history=again.data[0].tolist(), counts=again.data[1].tolist(),
                      registry=repr(HistoryBuffer._statistics_methods))))
'''


@pytest.mark.parametrize('ours, loader', [(True, 'torch.load'), (False, 'safe_load')])
def test_a_resumed_message_hub_smooths_and_saves_again(tmp_path, ours, loader):
    """In a fresh interpreter, where no HistoryBuffer was ever built (so MMEngine's class-wide
    registry of statistics methods is empty), the loaded buffers still compute the logger's
    smoothed values, without registering anything: our runs' checkpoints as MMDetection's own
    tools load them, MMEngine's own CheckpointHook's as ours do."""
    torch.save(hub_checkpoint(f'test_resumed_{ours}', ours), tmp_path / 'epoch_1.pth')
    done = subprocess.run([sys.executable, '-c', RESUME, str(tmp_path / 'epoch_1.pth'),
                           str(tmp_path / 'epoch_2.pth'), loader], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found == dict(smoothed=[2.5, 2.0, 2.0], eta='np.float64(12.5)',
                         history=[1.0, 3.0, 2.0, 6.0], counts=[1, 1, 1, 1], registry='{}')


@pytest.mark.parametrize('content, kind', [
    (b'\x08\x08\x12\x07pytorch', 'an ONNX model'), (b'\x89PNG\r\n\x1a\n', 'a PNG image'),
    (b'{"images": []}', 'a JSON file'), (b'hello', 'a file of another format')])
def test_a_file_that_is_no_checkpoint_is_named_as_what_it_is(tmp_path, content, kind):
    """Fails on main: an ONNX file given as a checkpoint was said to hold 'Python objects beyond
    tensors', with advice to --unsafe-load it."""
    path = tmp_path / 'file.pth'
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=f'{path} is {kind}, not a PyTorch checkpoint') \
            as err:
        safe_load(str(path))
    assert ('scored by tools/test.py' in str(err.value)) == (kind == 'an ONNX model')
    assert 'unsafe-load' not in str(err.value)


def losses(checkpoint: str) -> int:
    """How many training losses the checkpoint's message hub holds."""
    return len(safe_load(checkpoint)['message_hub']['log_scalars']['train/loss'].data[0])


@pytest.mark.slow
def test_mmdetections_own_checkpoints_are_tested_resumed_and_converted(data_root, tmp_path):
    """Fails on main: MMDetection's own tools/train.py, on a config without our runtime hooks,
    writes checkpoints whose message hub buffers MMEngine pickles with getattr; our
    tools/test.py, --resume and the converter refused them as unsafe."""
    work_dir, options = tmp_path / 'run', toy_options(data_root, epochs=2)
    config = config_without_runtime_hooks(tmp_path)
    mmdet_train = osp.join(osp.dirname(mmdet.__file__), '.mim', 'tools', 'train.py')
    run(mmdet_train, config, '--work-dir', str(work_dir), '--cfg-options', *options)
    first, last = str(work_dir / 'epoch_1.pth'), str(work_dir / 'epoch_2.pth')
    with pytest.raises(pickle.UnpicklingError, match='GLOBAL mmengine.logging.history_buffer'):
        torch.load(first, weights_only=True)  # what MMEngine's hook wrote, as torch reads it

    tested = run('tools/test.py', config, last, '--work-dir', str(tmp_path / 'test'),
                 '--cfg-options', *options)
    assert 'coco/bbox_mAP' in tested
    run('tools/convert_checkpoint.py', last, str(tmp_path / 'deploy.pth'))
    assert 'backbone.stem.0.weight' in torch.load(tmp_path / 'deploy.pth',
                                                  weights_only=True)['state_dict']

    epoch = losses(first)
    run('tools/train.py', config, '--work-dir', str(work_dir), '--resume', first,
        '--cfg-options', *options)
    assert first_logged_iter_of_last_run(work_dir) == epoch + 1
    assert losses(last) == 2 * epoch  # the hub went on from the checkpoint's
