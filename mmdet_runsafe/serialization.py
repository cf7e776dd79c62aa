"""Checkpoint reading that never runs code from the file and never changes anything in the
loading process but the objects it returns (``safe_load``), apart and named for it the reading
of a trusted file with full unpickling (``load_trusted``), and writing that reports a failed
write as the OSError it is (``save``).

Every ``safe_load`` is ``torch.load(weights_only=True)``: torch's restricted unpickler, which
builds tensors and plain containers and resolves every other name a file gives through torch's
allow-list (``torch.serialization.add_safe_globals``, ``safe_globals``). That list admits a
*name*; an allowed function is then called with whatever arguments the file gives, an allowed
class's ``__setstate__`` with whatever state. MMEngine's Runner writes a few objects besides
tensors whose own classes cannot be admitted so:

- numpy's ``dtype`` (and ``ndarray``, ``_reconstruct``, ``scalar``, for the message hub's
  histories and the ``eta``): a pickled dtype's state sets its flags and fields unchecked, so a
  crafted file could declare an object field over raw bytes, pointers of its choosing (tried:
  the process crashes).
- MMEngine's ``HistoryBuffer`` (the message hub's buffers): unpickling it merges the file's
  statistics methods into that class's registry (a file could replace ``mean`` for the whole
  process); and it writes those methods as ``getattr(HistoryBuffer, 'min')`` calls, where
  admitting ``builtins.getattr`` would let a file reach any attribute of any allowed object.

What is hand-written here is only what the allow-list cannot do, checking the arguments and
state a file gives: those names resolve to stand-ins that take plain data only and build new
objects from it. numpy's to ``_NumpyDtype``, ``_NumpyArray``, ``_reconstruct`` and ``_scalar``
(bool, integer, float, complex; any shape and byte order); the buffers to
:class:`WeightsOnlyHistoryBuffer` (its three data attributes, never the registry);
``getattr`` to ``_statistics_method`` (MMEngine's four default statistics methods of the buffer
class, read and dropped; nothing else).

Which list, when. Importing the safety hooks (``mmdet_runsafe.hooks``) adds what our runs'
checkpoints hold (the numpy stand-ins, and ``WeightsOnlyHistoryBuffer`` under its own name,
which ``WeightsOnlyCheckpointHook`` writes) to torch's process-wide list
(``allow_runner_checkpoint_types``), because MMDetection's own tools (``tools/test.py``,
``--resume``, ``init_detector``) must load our runs' checkpoints, through MMEngine's
``torch.load`` with torch's default ``weights_only=True``, where no context can be given. What
MMEngine's stock CheckpointHook writes (MMEngine's HistoryBuffer name, ``getattr``) is allowed
around our own loads only, by torch's ``safe_globals`` context manager: a checkpoint of a config
without our hooks is tested, resumed and converted by our tools, and no other load in the
process sees ``getattr`` mean anything.

Whatever a file holds, loading it creates new objects only: no class attribute, no registry,
no shared numpy dtype and no allow-list changes (tests/test_safe_loading.py tries). Anything
else in a file is refused with the reason.
"""
import contextlib
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
                                  f'the message hub buffers MMEngine\'s runs write load')


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
    at import, so a resumed process has them without the file). It is also what MMEngine's
    HistoryBuffer in a file loads as (our loaders), its state's statistics methods checked to
    be the four defaults and dropped."""

    @property
    def _statistics_methods(self) -> dict:
        # A new dict on each access: HistoryBuffer.__init__ setdefaults the four defaults into
        # it, so that building an instance (a file may call the class) leaves the class alone.
        return {**_DEFAULT_STATISTICS, **HistoryBuffer._statistics_methods}

    def __getstate__(self) -> dict:
        return dict(zip(_HISTORY_STATE, (self.max_length, *self.data)))

    def __setstate__(self, state) -> None:
        if type(state) is dict and 'statistics_methods' in state:
            # MMEngine's own pickling adds the class's statistics methods: its four defaults
            # (read by _statistics_method) are dropped, as registering them changes nothing.
            methods = state['statistics_methods']
            if not (type(methods) is dict and all(
                    type(name) is str and _DEFAULT_STATISTICS.get(name) is method
                    for name, method in methods.items())):
                raise _refused(f'a message hub buffer with statistics methods '
                               f'{reprlib.repr(methods)}')
            state = {k: v for k, v in state.items() if k != 'statistics_methods'}
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


def _statistics_method(owner, name):
    """What ``builtins.getattr`` in a file resolves to: MMEngine writes a buffer's statistics
    methods as ``getattr(HistoryBuffer, 'min')``; those four reads of the buffer class (whose
    name resolves to WeightsOnlyHistoryBuffer) are answered, with MMEngine's function, which
    the buffer's ``__setstate__`` then drops; any other is refused."""
    if not (owner is WeightsOnlyHistoryBuffer and type(name) is str
            and name in _DEFAULT_STATISTICS):
        raise _refused(f'getattr({reprlib.repr(owner)}, {reprlib.repr(name)})')
    return _DEFAULT_STATISTICS[name]


# What our runs' checkpoints hold (see the module's doc): allowed process-wide by importing the
# safety hooks.
RUNNER_CHECKPOINT_TYPES = [
    WeightsOnlyHistoryBuffer, (_NumpyDtype, 'numpy.dtype'), (_NumpyArray, 'numpy.ndarray'),
    # The name checkpoints written before the two packages carry (a weights_only load reads
    # them; a full unpickling, which imports the name, does not).
    (WeightsOnlyHistoryBuffer, 'mmdet_vanillanet.serialization.WeightsOnlyHistoryBuffer'),
    # numpy 2 writes its functions' module as numpy._core.multiarray, numpy 1 as numpy.core.
    *[(function, f'numpy.{core}.multiarray.{name}') for core in ('core', '_core')
      for name, function in (('_reconstruct', _reconstruct), ('scalar', _scalar))]]
# What MMEngine's own CheckpointHook adds: allowed around our loads only.
MMENGINE_CHECKPOINT_TYPES = [
    (WeightsOnlyHistoryBuffer, 'mmengine.logging.history_buffer.HistoryBuffer'),
    (_statistics_method, 'builtins.getattr')]


def allow_runner_checkpoint_types():
    """Allow-list, for every weights_only load in this process (torch's list is global), what
    reads back the objects our runs write into checkpoints (above). Importing
    ``mmdet_runsafe.hooks`` does this: MMDetection's own tools, which load through MMEngine's
    ``torch.load`` with torch's default ``weights_only=True`` under torch >= 2.6, must resume
    and test our runs."""
    torch.serialization.add_safe_globals(RUNNER_CHECKPOINT_TYPES)


@contextlib.contextmanager
def _allowed(types):
    """torch's ``safe_globals`` context for those of ``types`` not allowed already: on exit it
    removes what it was given, which must not take process-wide entries away."""
    allowed = torch.serialization.get_safe_globals()
    with torch.serialization.safe_globals([t for t in types if t not in allowed]):
        yield


def _unpickler_reason(err: pickle.UnpicklingError) -> str:
    """The unpickler's own first sentence: torch.load raises its error again inside advice on
    loading unsafely (the original kept as the context), which words some errors (a blocked
    module: ``os.system``) without the 'WeightsUnpickler error:' mark."""
    inner = err.__context__
    text = str(inner) if isinstance(inner, pickle.UnpicklingError) else \
        str(err).split('WeightsUnpickler error:', 1)[-1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0].split('. ')[0].rstrip('.') if lines else type(err).__name__


def safe_load(filename: str, map_location='cpu', mmap: bool = False):
    """Read a checkpoint (a path, URL or model-zoo name) without unpickling arbitrary objects:
    tensors, plain numpy data and the message hub buffers our runs and MMEngine's own
    CheckpointHook write; anything else is a CheckpointError naming the file. ``mmap``: map a
    local file instead of reading it."""
    return _load(filename, map_location, weights_only=True, mmap=mmap)


def load_trusted(filename: str, map_location='cpu'):
    """Read a checkpoint with full unpickling, which runs whatever code the file holds: only for
    files you trust, to rewrite them as plain tensors (``tools/convert_checkpoint.py
    --unsafe-load``)."""
    return _load(filename, map_location, weights_only=False, mmap=False)



def save(obj, path: str):
    """``torch.save(obj, path)``, through a Python file: a write that fails (a full disk) raises
    its OSError, where torch's own file writer says "enforce fail at inline_container.cc" and
    loses the cause."""
    with open(path, 'wb') as f:
        writes = _Writes(f)
        try:
            torch.save(obj, writes)
        except RuntimeError:
            if writes.error is None:
                raise
            raise writes.error from None


class _Writes:
    """A file's ``write`` and ``flush`` for torch.save, keeping the OSError a write raised
    (torch's writer replaces it by a RuntimeError of its own)."""

    def __init__(self, file):
        self.file, self.error = file, None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self):
        self.file.flush()


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
    allowed = _allowed(RUNNER_CHECKPOINT_TYPES + MMENGINE_CHECKPOINT_TYPES) if weights_only \
        else contextlib.nullcontext()
    try:
        kind = file_kind(source) if isinstance(source, str) else None
        if kind is not None:
            hint = (': an exported file is scored by tools/test.py, given in place of the '
                    'checkpoint (with the checkpoint it was exported from), and run by '
                    'OnnxDetector' if kind == ONNX else '')
            raise CheckpointError(f'{filename} is {kind}, not a PyTorch checkpoint{hint}')
        with allowed:
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
            f'hub buffers MMEngine\'s runs write, so loading it could run code from the file or '
            f'change the loading process; it was not loaded. If you trust the file, write its '
            f'fused weights as plain tensors: convert it (convert_checkpoint, '
            f'tools/convert_checkpoint.py) with ', Argument('unsafe_load', True),
            f'. (torch said: {_unpickler_reason(err)})') from None
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
