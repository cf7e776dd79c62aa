"""Checkpoint reading that never runs code from the file and never changes anything in the
loading process but the objects it returns (``safe_load``), and, apart and named for it, the
reading of a trusted file with full unpickling (``load_trusted``).

Every ``safe_load`` goes through ``torch.load(weights_only=True)``. MMEngine's Runner writes a few
non-tensor objects into its checkpoints: its message hub's HistoryBuffers, and numpy arrays and
scalars (the buffers' histories, the ``eta``). Importing the plugin allow-lists, for every
weights_only load in the process (torch's list is global), what reads exactly those back:

- numpy's names (``numpy.dtype``, ``numpy.ndarray``, ``numpy.core.multiarray._reconstruct`` and
  ``scalar``, also under ``numpy._core``) resolve to the stand-ins below, not to numpy. They
  take plain numeric data only (bool, integer, float, complex; any shape and byte order) and
  build new arrays and scalars from the file's bytes. numpy's own classes cannot be allowed: a
  pickled dtype's state sets its flags and fields unchecked, so a crafted file could declare an
  object field over raw bytes, pointers of its choosing (tried: the process crashes).
- The message hub's buffers load as :class:`WeightsOnlyHistoryBuffer`, which accepts its three
  data attributes and nothing else, and never writes to HistoryBuffer's class-wide registry of
  statistics methods. MMEngine's HistoryBuffer is not allowed: unpickling it merges the file's
  methods into that registry (a file could replace ``mean`` for the whole process), and
  MMEngine pickles the methods as ``getattr(HistoryBuffer, 'min')``, which a weights_only load
  refuses anyway (allowing ``getattr`` would let a file reach any attribute of any allowed
  object). ``WeightsOnlyCheckpointHook`` writes every checkpoint's buffers as this class.

Whatever a file holds, loading it creates new objects only: no class attribute, no registry and
no shared numpy dtype changes (tests/test_safe_loading.py tries). Anything else in a file is
refused with the reason.
"""
import math
import pickle
import reprlib
import zipfile
from typing import Optional

import numpy as np
import torch
from mmengine.logging.history_buffer import HistoryBuffer

from .checkpoint_sources import open_checkpoint
from .errors import Argument, CheckpointError, TruncatedCheckpointError


def _refused(what: str) -> pickle.UnpicklingError:
    # An UnpicklingError, so that torch.load and safe_load report it as a refused file.
    return pickle.UnpicklingError(f'{what} is refused: only plain numeric numpy data and '
                                  f'the message hub buffers our runs write load')


def _exact(value, expected) -> bool:
    """``value == expected`` without calling the file's objects' ``==`` (an array's is
    elementwise)."""
    if type(value) is not type(expected):
        return False
    if type(expected) is tuple:
        return len(value) == len(expected) and all(map(_exact, value, expected))
    return value == expected


# What numpy writes as the spec of a bool, integer, float or complex dtype: 'b1', 'i8', 'c16'.
_PLAIN_SPECS = {np.dtype(code).str[1:] for code in
                '?' + np.typecodes['AllInteger'] + np.typecodes['AllFloat']}


class _NumpyDtype:
    """What ``numpy.dtype`` in a file unpickles to: numpy writes a dtype as the call
    ``numpy.dtype(spec, align, copy)`` and a state that sets its byte order (and, for others
    than plain types, its fields and flags). Only the byte order of a plain type is taken."""

    dtype = None  # None for an instance that the file made without the call

    def __init__(self, spec, align=False, copy=True):  # align, copy: nothing for plain types
        if not (type(spec) is str and spec in _PLAIN_SPECS):
            raise _refused(f'numpy dtype {reprlib.repr(spec)}')
        self.dtype = np.dtype(spec)

    def __setstate__(self, state) -> None:
        # numpy's state of a plain type: (3, byte order, None, None, None, -1, -1, 0).
        if self.dtype is None or not (
                type(state) is tuple and len(state) == 8 and type(state[1]) is str
                and state[1] in ('<', '>', '|', '=')
                and _exact(state[:1] + state[2:], (3, None, None, None, -1, -1, 0))):
            raise _refused(f'numpy dtype state {reprlib.repr(state)}')
        self.dtype = self.dtype.newbyteorder(state[1])


def _plain_dtype(spec) -> np.dtype:
    if type(spec) is not _NumpyDtype or spec.dtype is None:
        raise _refused(f'numpy data of dtype {reprlib.repr(spec)}')
    return spec.dtype


class _NumpyArray(np.ndarray):
    """What ``numpy.ndarray`` in a file unpickles to: numpy writes an array as the call
    ``_reconstruct(numpy.ndarray, (0,), b'b')`` and a state that fills it. Pickled again, it is
    written as a plain ndarray."""

    def __new__(cls, *args, **kwargs):
        # numpy never writes a call of ndarray(...); a file that does could pass any dtype.
        raise _refused('a call of numpy.ndarray')

    def __setstate__(self, state) -> None:
        if self.__dict__.get('_filled'):
            # A second state would free the data that a tensor made from the array (torch's
            # _rebuild_device_tensor_from_numpy, in the same file) goes on using.
            raise _refused('a second state for one numpy array')
        if not (type(state) is tuple and len(state) == 5):
            raise _refused(f'numpy array state {reprlib.repr(state)}')
        version, shape, spec, fortran_order, data = state
        dtype = _plain_dtype(spec)
        if not (_exact(version, 1) and type(shape) is tuple
                and all(type(n) is int and n >= 0 for n in shape)
                and type(fortran_order) is bool and type(data) is bytes
                and len(data) == math.prod(shape) * dtype.itemsize):
            raise _refused(f'a numpy array of shape {reprlib.repr(shape)} from '
                           f'{type(data).__name__}')
        super().__setstate__((1, shape, dtype, fortran_order, data))
        self._filled = True

    def __reduce__(self):
        return self.view(np.ndarray).__reduce__()


def _reconstruct(subtype, shape, typecode) -> _NumpyArray:
    """numpy's ``_reconstruct``: the empty array that the pickled state then fills."""
    if not (subtype is _NumpyArray and _exact(shape, (0,)) and _exact(typecode, b'b')):
        raise _refused('numpy _reconstruct of other than an empty ndarray')
    return np.empty(0, np.uint8).view(_NumpyArray)


def _scalar(spec, data):
    """numpy's ``scalar``: a numpy scalar (np.float64, ...) from its bytes."""
    dtype = _plain_dtype(spec)
    if not (type(data) is bytes and len(data) == dtype.itemsize):
        raise _refused(f'a numpy {dtype} scalar from {type(data).__name__}')
    return np.frombuffer(data, dtype)[0]


# The names of a buffer's data in the files (MMEngine's attribute names, which its own pickling
# writes); read and set here through HistoryBuffer's public ``data`` and constructor.
_HISTORY_STATE = ('max_length', '_log_history', '_count_history')
_DEFAULT_STATISTICS = {name: getattr(HistoryBuffer, name) for name in
                       ('min', 'max', 'current', 'mean')}


class WeightsOnlyHistoryBuffer(HistoryBuffer):
    """A HistoryBuffer that pickles its data only, and unpickles into its own attributes only.

    HistoryBuffer keeps its statistics methods in one dict for the whole class, which its
    pickling writes and its unpickling updates. This class reads them without writing: MMEngine's
    four defaults, then whatever code registered on HistoryBuffer (registration is done by code,
    at import, so a resumed process has them without the file)."""

    @property
    def _statistics_methods(self) -> dict:
        # A new dict on each access: HistoryBuffer.__init__ setdefaults the four defaults into
        # it, so that building an instance (a file may call the class) leaves the class alone.
        return {**_DEFAULT_STATISTICS, **HistoryBuffer._statistics_methods}

    def __getstate__(self) -> dict:
        return dict(zip(_HISTORY_STATE, (self.max_length, *self.data)))

    def __setstate__(self, state) -> None:
        if not (type(state) is dict and len(state) == len(_HISTORY_STATE)
                and all(type(name) is str for name in state)
                and set(state) == set(_HISTORY_STATE)):
            raise _refused(f'a message hub buffer with state {reprlib.repr(state)}')
        max_length, log, count = (state[name] for name in _HISTORY_STATE)
        if not (type(max_length) is int and max_length > 0
                and all(isinstance(h, np.ndarray) and h.ndim == 1 and h.dtype.kind in 'biuf'
                        for h in (log, count)) and len(log) == len(count)):
            raise _refused('a message hub buffer with other than 1-D numeric histories')
        # Plain ndarrays, whichever loader built them (a weights_only load gives _NumpyArrays).
        HistoryBuffer.__init__(self, np.array(log), np.array(count), max_length)


RUNNER_CHECKPOINT_TYPES = [
    WeightsOnlyHistoryBuffer, (_NumpyDtype, 'numpy.dtype'), (_NumpyArray, 'numpy.ndarray'),
    # numpy 2 writes its functions' module as numpy._core.multiarray, numpy 1 as numpy.core.
    *[(function, f'numpy.{core}.multiarray.{name}') for core in ('core', '_core')
      for name, function in (('_reconstruct', _reconstruct), ('scalar', _scalar))]]


def allow_runner_checkpoint_types():
    """Allow-list, for every weights_only load in this process (torch's list is global), what
    reads back the objects MMEngine's Runner writes into checkpoints (above). The plugin does
    this on import, so that MMDetection's own tools can resume and test our runs' checkpoints
    under torch >= 2.6."""
    torch.serialization.add_safe_globals(RUNNER_CHECKPOINT_TYPES)


def _unpickler_reason(err: pickle.UnpicklingError) -> str:
    """The unpickler's own first sentence, from torch's message around it (which opens with
    advice on loading unsafely)."""
    text = str(err).split('WeightsUnpickler error:', 1)[-1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0].split('. ')[0].rstrip('.') if lines else type(err).__name__


def safe_load(filename: str, map_location='cpu', mmap: bool = False):
    """Read a checkpoint (a path, URL or model-zoo name) without unpickling arbitrary objects:
    tensors, plain numpy data and the message hub buffers our runs write; anything else is a
    CheckpointError naming the file. ``mmap``: map a local file instead of reading it."""
    return _load(filename, map_location, weights_only=True, mmap=mmap)


def load_trusted(filename: str, map_location='cpu'):
    """Read a checkpoint with full unpickling, which runs whatever code the file holds: only for
    files you trust, to rewrite them as plain tensors (``tools/convert_checkpoint.py
    --unsafe-load``)."""
    return _load(filename, map_location, weights_only=False, mmap=False)


ONNX = 'an ONNX model'
# The first bytes of torch's zip format and of its legacy (pickle) one.
CHECKPOINT_SIGNATURES = (b'PK\x03\x04', b'\x80')
# What other files a checkpoint is mistaken for begin with (an ONNX model: its first field,
# ir_version).
SIGNATURES = ((b'\x08', ONNX), (b'\x89PNG', 'a PNG image'), (b'\xff\xd8\xff', 'a JPEG image'),
              (b'{', 'a JSON file'), (b'[', 'a JSON file'))


def file_kind(path: str) -> Optional[str]:
    """What a local file's first bytes say it is when it is no checkpoint ('an ONNX model', a
    PNG or JPEG image, a JSON file, 'a file of another format'); None for what torch.load may
    read (its zip or legacy format), or an empty file (a write cut short)."""
    with open(path, 'rb') as f:
        head = f.read(8)
    if not head or head.startswith(CHECKPOINT_SIGNATURES):
        return None
    return next((kind for signature, kind in SIGNATURES if head.startswith(signature)),
                'a file of another format')


def _load(filename: str, map_location, weights_only: bool, mmap: bool):
    """torch.load with each failure as one CheckpointError: a refused object, a file that cannot
    be read, a truncated or corrupt one, a file of another kind (an ONNX model, an image)."""
    source = open_checkpoint(filename)
    # What reads back the objects MMEngine writes was allow-listed when the plugin was
    # imported (before this module could be).
    try:
        kind = file_kind(source) if isinstance(source, str) else None
        if kind is not None:
            hint = (': an exported file is scored by tools/test.py, given in place of the '
                    'checkpoint (with the checkpoint it was exported from), and run by '
                    'OnnxDetector' if kind == ONNX else '')
            raise CheckpointError(f'{filename} is {kind}, not a PyTorch checkpoint{hint}')
        try:
            return torch.load(source, map_location=map_location, weights_only=weights_only,
                              mmap=mmap and isinstance(source, str))
        except RuntimeError as err:
            if not (mmap and 'mmap can only be used' in str(err)):
                raise
            # A file in torch's legacy (pre-zip) format: it loads, only not memory-mapped.
            return torch.load(source, map_location=map_location, weights_only=weights_only)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f'{filename} holds Python objects beyond tensors, plain numpy data and the message '
            f'hub buffers our runs write, so loading it could run code from the file or change '
            f'the loading process; it was not loaded. If you trust the file, rewrite it as '
            f'plain tensors: convert it (convert_checkpoint, tools/convert_checkpoint.py) with ',
            Argument('unsafe_load', True), f'. (torch said: {_unpickler_reason(err)})') from None
    except PermissionError as err:  # not a damaged file: --resume must not pass over it
        raise CheckpointError(f'cannot read {filename} ({err.strerror}); fix its '
                              f'permissions') from None
    except (EOFError, OSError, zipfile.BadZipFile) as err:
        raise TruncatedCheckpointError(f'{filename} is truncated or corrupt ({err}); use an '
                                       f'earlier checkpoint or download it again') from None
    except RuntimeError as err:
        if 'PytorchStreamReader' in str(err) or 'zip archive' in str(err):
            raise TruncatedCheckpointError(f'{filename} is truncated or corrupt '
                                           f'({str(err).splitlines()[0]}); use an earlier '
                                           f'checkpoint or download it again') from None
        raise
