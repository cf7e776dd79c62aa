"""Checkpoints that a kill or a full disk cannot take away.

MMEngine's CheckpointHook writes each checkpoint in place and, with ``max_keep_ckpts``, deletes
the oldest one *before* writing the new one: a kill during the save (or a disk that fills up)
can leave a run with a half-written file and nothing else to resume from (and it deletes the
previous best checkpoint before writing the new one). This hook writes each file under a
temporary name and renames it into place once it is complete (a rename is atomic on POSIX file
systems), and deletes outdated files only after the new one is in place. It writes nothing
through a symbolic link it did not create, and records each file it writes as the run's
(``mmdet_runsafe.run_files``: what ``tools/train.py --overwrite`` may remove).
"""
import contextlib
import os
import os.path as osp

from mmdet.registry import HOOKS
from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend, register_backend
from mmengine.hooks import CheckpointHook

from ..output_paths import new_file_for
from ..run_files import last_checkpoint, record_written

ATOMIC_BACKEND = 'local_atomic'
# The file new_file_for created: opened again without following a link (one put in its place).
OPEN_OURS = os.O_WRONLY | getattr(os, 'O_NOFOLLOW', 0) | getattr(os, 'O_BINARY', 0)


@register_backend(ATOMIC_BACKEND)
class AtomicLocalBackend(LocalBackend):
    """The local file backend, but a file it writes appears complete or not at all, is never
    written through a symbolic link, and is recorded as the run's (``run_files``)."""

    def put(self, obj: bytes, filepath) -> None:
        filepath = str(filepath)
        os.makedirs(osp.dirname(filepath) or '.', exist_ok=True)
        # A new file of our own beside it (NAME.XXXXXXXX.partial: not *.pth, never taken for a
        # checkpoint; created exclusively, never a file or link of the user's), renamed onto
        # filepath when complete: the rename replaces whatever is there, a link included.
        with new_file_for(filepath, replace=True) as partial:
            fd = os.open(partial, OPEN_OURS)
            with os.fdopen(fd, 'wb') as f:
                f.write(obj)
                f.flush()
                os.fsync(f.fileno())
        record_written(filepath)


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


# What MMEngine's FileClient (built by its CheckpointHook.before_train) logs when it is made.
FILE_CLIENT_NOTICES = ('"FileClient" will be deprecated in future',
                       '"HardDiskBackend" is the alias of "LocalBackend"')


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """MMEngine's CheckpointHook (same arguments) with atomic writes, and outdated checkpoints
    deleted only once the new one is in place. Declared in
    ``configs/_base_/runsafe_runtime.py`` as the type of ``default_hooks.checkpoint``, so a
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

    def before_train(self, runner) -> None:
        """MMEngine's, without the two deprecation notices it logs on every run: it builds a
        FileClient that it keeps for compatibility only (the hook writes through
        ``file_backend``), which a user cannot act on."""
        def shown(record) -> bool:
            return not str(record.msg).startswith(FILE_CLIENT_NOTICES)

        runner.logger.addFilter(shown)
        try:
            super().before_train(runner)
        finally:
            runner.logger.removeFilter(shown)

    @contextlib.contextmanager
    def _saving(self, runner):
        """Around MMEngine's saves: the outdated checkpoints (and the previous best one) that it
        deletes before saving are deleted once the saves of this call have succeeded, and not
        at all if one failed. Its ``last_checkpoint`` file, which it writes with a plain open,
        is refused when anything but a regular file (a link above all) is in its place, and is
        recorded as the run's once rewritten."""
        backend = getattr(self, 'file_backend', None)  # set in before_train
        if backend is None:  # a run that only validates saves nothing
            yield
            return
        main = is_main_process()
        last = last_checkpoint(runner.work_dir) if main else None
        before = _stat(last) if main else None
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
        if main and _stat(last) not in (None, before):
            record_written(last)

    # MMEngine's hook saves (and deletes) in these three public methods.
    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        with self._saving(runner):
            super().after_train_iter(runner, batch_idx, data_batch, outputs)

    def after_train_epoch(self, runner) -> None:
        with self._saving(runner):
            super().after_train_epoch(runner)

    def after_val_epoch(self, runner, metrics) -> None:
        with self._saving(runner):
            super().after_val_epoch(runner, metrics)


def _stat(path: str):
    """(inode, size, modification time) of a file, None when there is none."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns
