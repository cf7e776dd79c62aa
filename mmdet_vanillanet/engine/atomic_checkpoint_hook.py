"""Checkpoints that a kill or a full disk cannot take away.

MMEngine's CheckpointHook writes each checkpoint in place and, with ``max_keep_ckpts``, deletes
the oldest one *before* writing the new one: a kill during the save (or a disk that fills up)
can leave a run with a half-written file and nothing else to resume from (and it deletes the
previous best checkpoint before writing the new one). This hook writes each file under a
temporary name and renames it into place once it is complete (a rename is atomic on POSIX file
systems), and deletes outdated files only after the new one is in place.
"""
import contextlib
import os
import os.path as osp

from mmdet.registry import HOOKS
from mmengine.fileio import LocalBackend, register_backend
from mmengine.hooks import CheckpointHook

ATOMIC_BACKEND = 'local_atomic'


@register_backend(ATOMIC_BACKEND)
class AtomicLocalBackend(LocalBackend):
    """The local file backend, but a file it writes appears complete or not at all."""

    def put(self, obj: bytes, filepath) -> None:
        filepath = str(filepath)
        os.makedirs(osp.dirname(filepath) or '.', exist_ok=True)
        partial = f'{filepath}.partial'  # not *.pth: never taken for a checkpoint
        try:
            with open(partial, 'wb') as f:
                f.write(obj)
                f.flush()
                os.fsync(f.fileno())
            os.replace(partial, filepath)
        except BaseException as err:
            if osp.exists(partial):
                os.remove(partial)
            if isinstance(err, OSError) and err.filename is None:  # name what could not be written
                raise OSError(err.errno, err.strerror, filepath) from None
            raise


class _DeferredRemoval:
    """A file backend whose ``remove``/``rmtree`` calls are recorded instead of done."""

    def __init__(self, backend):
        self._backend = backend
        self.doomed = []

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def remove(self, path):
        self.doomed.append(path)

    rmtree = remove  # checkpoints saved by DeepSpeed are folders


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """MMEngine's CheckpointHook (same arguments) with atomic writes, and outdated checkpoints
    deleted only once the new one is in place. Declared in
    ``configs/_base_/vanillanet_runtime.py`` as the type of ``default_hooks.checkpoint``, so a
    config's ``interval``, ``max_keep_ckpts`` or ``save_best`` apply to it as usual. Writes to
    a remote ``out_dir`` (or with ``backend_args`` of the config's) go through MMEngine's
    backends unchanged.

    Example (in a config)::

            default_hooks = dict(checkpoint=dict(type='AtomicCheckpointHook', interval=1,
                                                 max_keep_ckpts=1))
    """

    def __init__(self, *args, out_dir=None, backend_args=None, file_client_args=None,
                 **kwargs):
        local = out_dir is None or '://' not in str(out_dir)
        if backend_args is None and file_client_args is None and local:
            backend_args = dict(backend=ATOMIC_BACKEND)
        super().__init__(*args, out_dir=out_dir, backend_args=backend_args,
                         file_client_args=file_client_args, **kwargs)

    @contextlib.contextmanager
    def _removals_after_saving(self):
        """Outdated checkpoints (and the previous best one) that MMEngine deletes before
        saving are deleted once the saves of this call have succeeded, and not at all if one
        failed."""
        backend = getattr(self, 'file_backend', None)  # set in before_train
        if backend is None:  # a run that only validates saves nothing
            yield
            return
        self.file_backend = deferred = _DeferredRemoval(backend)
        try:
            yield
        finally:
            self.file_backend = backend
        # A file name template without the step names the outdated file as the new one.
        written = {self.last_ckpt, getattr(self, 'best_ckpt_path', None),
                   *getattr(self, 'best_ckpt_path_dict', {}).values()}
        for path in deferred.doomed:
            if path in written:
                continue
            if backend.isfile(path):
                backend.remove(path)
            elif backend.isdir(path):
                backend.rmtree(path)

    # MMEngine's hook saves (and deletes) in these three public methods.
    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        with self._removals_after_saving():
            super().after_train_iter(runner, batch_idx, data_batch, outputs)

    def after_train_epoch(self, runner) -> None:
        with self._removals_after_saving():
            super().after_train_epoch(runner)

    def after_val_epoch(self, runner, metrics) -> None:
        with self._removals_after_saving():
            super().after_val_epoch(runner, metrics)
