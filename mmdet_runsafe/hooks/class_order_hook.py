"""Refuse, before a run trains or tests, a COCO file whose categories are in another order than
the config's classes (see ``mmdet_runsafe.class_order``): under any tool, MMDetection's own
included, since the configs declare this hook."""
from mmdet.datasets import CocoDataset
from mmdet.registry import HOOKS
from mmengine.hooks import Hook

from ..class_order import check_class_order, check_evaluator_class_order, is_local_json
from ..runner_state import loop_classes


def _leaf_datasets(dataset):
    """The datasets inside Concat/Repeat/ClassBalanced/MultiImageMix wrappers."""
    stack = [dataset]
    while stack:
        ds = stack.pop()
        if hasattr(ds, 'datasets'):
            stack.extend(ds.datasets)
        elif hasattr(ds, 'dataset'):
            stack.append(ds.dataset)
        else:
            yield ds


@HOOKS.register_module()
class ClassOrderHook(Hook):
    """Before a run trains, validates or tests: every COCO dataset of the loop, and its
    evaluator's ``ann_file``, lists the config's classes in the config's order (one line naming
    the file and both orders otherwise). Each loop is checked once, when MMEngine has built it
    (training builds its validation loop too). Declared in
    ``configs/_base_/runsafe_runtime.py``.

    Example (in a config)::

            default_hooks = dict(class_order=dict(type='ClassOrderHook'))
    """

    priority = 'VERY_HIGH'

    def __init__(self):
        self._checked = set()

    def before_train(self, runner) -> None:
        self._check(runner, runner.train_loop, None)
        self._check(runner, runner.val_loop, 'val_evaluator')

    def before_val(self, runner) -> None:  # a run that only validates
        self._check(runner, runner.val_loop, 'val_evaluator')

    def before_test(self, runner) -> None:
        self._check(runner, runner.test_loop, 'test_evaluator')

    def _check(self, runner, loop, evaluator_key) -> None:
        if loop is None or id(loop) in self._checked:
            return
        self._checked.add(id(loop))
        for ds in _leaf_datasets(loop.dataloader.dataset):
            if isinstance(ds, CocoDataset) and is_local_json(ds.ann_file):
                check_class_order(ds.ann_file, ds.metainfo.get('classes'))
        if evaluator_key:
            check_evaluator_class_order(runner.cfg.get(evaluator_key), loop_classes(loop),
                                        evaluator_key)
