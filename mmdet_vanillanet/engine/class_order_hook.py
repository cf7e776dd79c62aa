"""Refuse, before a run trains or tests, a COCO file whose categories are in another order than
the config's classes (see ``mmdet_vanillanet.class_order``): under any tool, MMDetection's own
included, since the configs declare this hook."""
from mmdet.datasets import CocoDataset
from mmdet.registry import HOOKS
from mmengine.hooks import Hook
from mmengine.runner import BaseLoop

from ..class_order import check_class_order, check_evaluator_class_order, is_local_json

# The loops a Runner builds before 'before_run' (train: train and val; test: test), and the
# config key of each one's evaluator.
LOOPS = (('_train_loop', None), ('_val_loop', 'val_evaluator'), ('_test_loop', 'test_evaluator'))


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


def run_classes(runner):
    """The classes of the run's datasets (the first loop built), or None."""
    for attr, _ in LOOPS:
        loop = getattr(runner, attr, None)
        if isinstance(loop, BaseLoop):
            return (getattr(loop.dataloader.dataset, 'metainfo', None) or {}).get('classes')
    return None


@HOOKS.register_module()
class ClassOrderHook(Hook):
    """Before a run: every COCO dataset it built, and every evaluator's ``ann_file``, lists the
    config's classes in the config's order (one line naming the file and both orders
    otherwise). Declared in ``configs/_base_/vanillanet_runtime.py``.

    Example (in a config)::

            default_hooks = dict(class_order=dict(type='ClassOrderHook'))
    """

    priority = 'VERY_HIGH'

    def before_run(self, runner) -> None:
        for attr, evaluator_key in LOOPS:
            loop = getattr(runner, attr, None)
            if not isinstance(loop, BaseLoop):  # not built: this run does not use it
                continue
            dataset = loop.dataloader.dataset
            for ds in _leaf_datasets(dataset):
                if isinstance(ds, CocoDataset) and is_local_json(ds.ann_file):
                    check_class_order(ds.ann_file, ds.metainfo.get('classes'))
            if evaluator_key:
                check_evaluator_class_order(
                    runner.cfg.get(evaluator_key),
                    (getattr(dataset, 'metainfo', None) or {}).get('classes'), evaluator_key)
