"""One training run per work_dir (``mmdet_runsafe.run_lock``), under any tool: the configs
declare this hook, so MMDetection's own tools/train.py takes the lock too."""
from mmdet.registry import HOOKS
from mmengine.hooks import Hook

from ..run_lock import lock_work_dir, unlock_work_dir


@HOOKS.register_module()
class WorkDirLockHook(Hook):
    """A training run holds ``WORK_DIR/run.lock`` from its start to its end (rank 0 for all
    ranks); a second training run or a ``--resume`` in the same work_dir while it lives stops
    with one line naming it. Test runs do not take it: they read checkpoints and write only
    their own timestamped folder. Our tools take the lock before building the Runner; this hook
    takes it under MMDetection's own tools, when training starts (``before_train``, which only
    training calls: after the checkpoint is loaded, before the checkpoint hook deletes or writes
    anything or a step is trained). Declared in ``configs/_base_/runsafe_runtime.py``.

    Example (in a config)::

            default_hooks = dict(work_dir_lock=dict(type='WorkDirLockHook'))
    """

    priority = 'HIGHEST'

    def before_train(self, runner) -> None:
        if runner.rank == 0:
            lock_work_dir(runner.work_dir)

    def after_train(self, runner) -> None:
        if runner.rank == 0:
            unlock_work_dir(runner.work_dir)
