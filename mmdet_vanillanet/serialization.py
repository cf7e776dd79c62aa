"""Checkpoint reading that never runs code from the file.

Every load goes through ``torch.load(weights_only=True)``. MMEngine's Runner writes a few
non-tensor objects into its checkpoints (numpy scalars and arrays in the message hub, its
HistoryBuffer); those specific types, and nothing else, are allow-listed so that resume and
test work under torch >= 2.6 without turning the protection off.

One thing cannot be allow-listed: HistoryBuffer pickles its statistics methods (min, max, mean,
current) as ``getattr(HistoryBuffer, 'min')``, and allowing ``getattr`` would let a crafted file
reach any attribute of any allowed object, which is the hole weights_only closes. Those four
are restored by HistoryBuffer.__setstate__ anyway, so the buffer is made to write only methods
registered beyond them (none, in MMEngine and MMDetection).
"""
import io
import os
import pickle
import zipfile

import numpy as np
import torch
from mmengine.logging.history_buffer import HistoryBuffer

from .errors import InputError


class CheckpointError(InputError, RuntimeError):
    """A checkpoint that cannot be read, or that does not fit the model."""


def _numpy_globals():
    core = getattr(np, '_core', None) or np.core  # numpy 2 renamed core to _core
    found = [core.multiarray.scalar, core.multiarray._reconstruct, np.ndarray, np.dtype]
    # numpy >= 1.25 pickles dtypes as instances of per-type classes (numpy.dtypes.Float64DType).
    dtypes = getattr(np, 'dtypes', None)
    if dtypes is not None:
        found += [getattr(dtypes, name) for name in dir(dtypes) if name.endswith('DType')]
    return found


SAFE_GLOBALS = [HistoryBuffer, *_numpy_globals()]
DEFAULT_STATISTICS = ('min', 'max', 'current', 'mean')


def _history_buffer_state(buffer: HistoryBuffer) -> dict:
    state = dict(buffer.__dict__)
    custom = {name: method for name, method in buffer._statistics_methods.items()
              if name not in DEFAULT_STATISTICS}
    if custom:
        state['statistics_methods'] = custom
    return state


def install_safe_checkpointing():
    """Let every weights_only load (ours and MMEngine's) accept what MMEngine's Runner writes,
    and make it write nothing that needs more."""
    torch.serialization.add_safe_globals(SAFE_GLOBALS)
    HistoryBuffer.__getstate__ = _history_buffer_state


def use_safe_loading():
    """Make every torch.load in this process weights_only, MMEngine's own loaders included
    (torchvision://, open-mmlab://, ... call torch.load without the argument), and route
    MMEngine's local and URL loading through ``safe_load`` for its messages. For the tools: a
    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD in the environment is overruled, with a warning."""
    from mmengine.logging import print_log
    from mmengine.runner import CheckpointLoader
    if os.environ.pop('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', None) is not None:
        print_log('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is ignored: checkpoints are always loaded '
                  'with weights_only=True (tools/convert_checkpoint.py --unsafe-load rewrites a '
                  'trusted file as plain tensors)', logger='current', level=30)
    os.environ['TORCH_FORCE_WEIGHTS_ONLY_LOAD'] = '1'

    def load(filename, map_location=None):
        return safe_load(filename, map_location=map_location or 'cpu')

    CheckpointLoader.register_scheme(prefixes=['', 'http://', 'https://'], loader=load,
                                     force=True)


def _open(filename: str):
    """A local path as is; URLs through torch's hub cache; other schemes through MMEngine."""
    if filename.startswith(('http://', 'https://')):
        model_dir = os.path.join(torch.hub.get_dir(), 'checkpoints')
        os.makedirs(model_dir, exist_ok=True)
        cached = os.path.join(model_dir, os.path.basename(filename.split('?')[0]))
        if not os.path.exists(cached):
            torch.hub.download_url_to_file(filename, cached, progress=True)
        return cached
    if '://' in filename:
        from mmengine.fileio import get
        return io.BytesIO(get(filename))
    if not os.path.isfile(filename):
        raise FileNotFoundError(f'checkpoint file not found: {filename}')
    return filename


def safe_load(filename: str, map_location='cpu', unsafe: bool = False, mmap: bool = False):
    """Read a checkpoint without unpickling arbitrary objects (``unsafe`` only for trusted
    files, through ``tools/convert_checkpoint.py --unsafe-load``)."""
    source = _open(filename)
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
        raise CheckpointError(f'{filename} is truncated or corrupt ({err}); '
                              f'use an earlier checkpoint or download it again') from None
    except RuntimeError as err:
        if 'PytorchStreamReader' in str(err) or 'zip archive' in str(err):
            raise CheckpointError(f'{filename} is truncated or corrupt '
                                  f'({str(err).splitlines()[0]}); use an earlier checkpoint '
                                  f'or download it again') from None
        raise
