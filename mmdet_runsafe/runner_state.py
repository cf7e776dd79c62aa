"""What our hooks read of MMEngine's Runner that it keeps private, in one place: no public
property says whether a checkpoint is resumed, which file it came from, or which loops a run
has built. These are plain attribute reads (``_resume``, ``_load_from``, ``_train_loop``,
``_val_loop``, ``_test_loop``), the same in every mmengine the package declares; the list and
how it is tested: docs/getting_started.md (MMEngine versions). And the model a Runner trains,
out of its wrappers."""
import torch.nn as nn
from mmengine.model import BaseTTAModel, is_model_wrapper
from mmengine.runner import BaseLoop


def resuming(runner) -> bool:
    """Whether the run resumes a checkpoint (``--resume``) rather than starts from its weights
    (``load_from``): the Runner's ``resume`` argument, which only the Runner keeps (``cfg``
    lacks it for a Runner built without a config)."""
    return bool(runner._resume)


def load_source(runner):
    """The checkpoint the run loads or resumes, as given to the Runner (None for MMEngine's
    auto-resume)."""
    return runner._load_from


def built_loops(runner) -> list:
    """The loops the run has built, in the order train, val, test. The public ``train_loop``,
    ``val_loop`` and ``test_loop`` build a loop on first access: a test run would build its
    training dataset."""
    loops = (runner._train_loop, runner._val_loop, runner._test_loop)
    return [loop for loop in loops if isinstance(loop, BaseLoop)]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside a DDP/FSDP (or other MMEngine) wrapper or a test-time-augmentation
    model (``--tta``; both, under distributed testing), or the model itself."""
    while is_model_wrapper(model) or isinstance(model, BaseTTAModel):
        model = model.module
    return model


def loop_classes(loop):
    """The classes of a built loop's dataset, or None."""
    return (getattr(loop.dataloader.dataset, 'metainfo', None) or {}).get('classes')


def run_classes(runner):
    """The classes of the run's datasets (the first loop built), or None."""
    loops = built_loops(runner)
    return loop_classes(loops[0]) if loops else None
