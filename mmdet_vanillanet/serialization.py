"""Checkpoint reading that never runs code from the file.

Every load goes through ``torch.load(weights_only=True)``. MMEngine's Runner writes a few
non-tensor objects into its checkpoints (numpy scalars and arrays in the message hub, its
HistoryBuffer); those specific types, and nothing else, are allow-listed so that resume and
test work under torch >= 2.6 without turning the protection off.

One thing cannot be allow-listed: HistoryBuffer pickles its statistics methods (min, max, mean,
current) as ``getattr(HistoryBuffer, 'min')``, and allowing ``getattr`` would let a crafted file
reach any attribute of any allowed object, which is the hole weights_only closes. The message
hub's buffers are therefore written as ``WeightsOnlyHistoryBuffer``s, which leave those four
out (HistoryBuffer.__setstate__ restores them); ``WeightsOnlyCheckpointHook`` does that for
every checkpoint a run writes, instead of patching MMEngine for the whole process.
"""
import io
import os
import pickle
import zipfile

import numpy as np
import torch
from mmengine.fileio import get as fetch_bytes
from mmengine.logging.history_buffer import HistoryBuffer

from .errors import InputError


class CheckpointError(InputError, RuntimeError):
    """A checkpoint that cannot be read, or that does not fit the model."""


class TruncatedCheckpointError(CheckpointError):
    """A checkpoint whose write was cut short (a kill, a full disk): an earlier one may do."""


def _numpy_globals():
    core = getattr(np, '_core', None) or np.core  # numpy 2 renamed core to _core
    found = [core.multiarray.scalar, core.multiarray._reconstruct, np.ndarray, np.dtype]
    # numpy >= 1.25 pickles dtypes as instances of per-type classes (numpy.dtypes.Float64DType).
    dtypes = getattr(np, 'dtypes', None)
    if dtypes is not None:
        found += [getattr(dtypes, name) for name in dir(dtypes) if name.endswith('DType')]
    return found


DEFAULT_STATISTICS = ('min', 'max', 'current', 'mean')


class WeightsOnlyHistoryBuffer(HistoryBuffer):
    """A HistoryBuffer that pickles only the statistics methods registered beyond the four
    defaults (none, in MMEngine and MMDetection), so that it loads with weights_only=True."""

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop('statistics_methods', None)
        custom = {name: method for name, method in HistoryBuffer._statistics_methods.items()
                  if name not in DEFAULT_STATISTICS}
        if custom:
            state['statistics_methods'] = custom
        return state


RUNNER_CHECKPOINT_TYPES = [HistoryBuffer, WeightsOnlyHistoryBuffer, *_numpy_globals()]


def allow_runner_checkpoint_types():
    """Allow-list, for every weights_only load in this process (torch's list is global), the
    types MMEngine's Runner writes into checkpoints. The plugin does this on import, so that
    MMDetection's own tools can resume and test our runs' checkpoints under torch >= 2.6."""
    torch.serialization.add_safe_globals(RUNNER_CHECKPOINT_TYPES)


def open_checkpoint(filename: str):
    """A local path as is; URLs through torch's hub cache; other schemes through MMEngine."""
    if filename.startswith(('http://', 'https://')):
        model_dir = os.path.join(torch.hub.get_dir(), 'checkpoints')
        os.makedirs(model_dir, exist_ok=True)
        cached = os.path.join(model_dir, os.path.basename(filename.split('?')[0]))
        if not os.path.exists(cached):
            torch.hub.download_url_to_file(filename, cached, progress=True)
        return cached
    if '://' in filename:
        return io.BytesIO(fetch_bytes(filename))
    if not os.path.isfile(filename):
        raise FileNotFoundError(f'checkpoint file not found: {filename}')
    return filename


def safe_load(filename: str, map_location='cpu', unsafe: bool = False, mmap: bool = False):
    """Read a checkpoint without unpickling arbitrary objects (``unsafe`` only for trusted
    files, through ``tools/convert_checkpoint.py --unsafe-load``)."""
    source = open_checkpoint(filename)
    # The types MMEngine writes were allow-listed when the plugin was imported (before this
    # module could be).
    try:
        try:
            return torch.load(source, map_location=map_location, weights_only=not unsafe,
                              mmap=mmap and isinstance(source, str))
        except RuntimeError as err:
            if not (mmap and 'mmap can only be used' in str(err)):
                raise
            # A file in torch's legacy (pre-zip) format: it loads, only not memory-mapped.
            return torch.load(source, map_location=map_location, weights_only=not unsafe)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f'{filename} holds Python objects beyond tensors and the types MMEngine writes, '
            f'so loading it could run code from the file; it was not loaded. If you trust the '
            f'file, rewrite it as plain tensors with `python tools/convert_checkpoint.py '
            f'{filename} OUT --unsafe-load`. (torch said: {str(err).splitlines()[0]})') from None
    except (EOFError, OSError, zipfile.BadZipFile) as err:
        raise TruncatedCheckpointError(f'{filename} is truncated or corrupt ({err}); use an '
                                       f'earlier checkpoint or download it again') from None
    except RuntimeError as err:
        if 'PytorchStreamReader' in str(err) or 'zip archive' in str(err):
            raise TruncatedCheckpointError(f'{filename} is truncated or corrupt '
                                           f'({str(err).splitlines()[0]}); use an earlier '
                                           f'checkpoint or download it again') from None
        raise
