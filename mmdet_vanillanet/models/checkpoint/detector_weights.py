"""A detector checkpoint checked against the detector, VanillaNet by VanillaNet and then the
rest, and loaded only when it fits (``load_from``, ``--resume`` and tests through
CheckpointFitHook; the deploy functions through ``load_detector_weights``).

It finds the VanillaNets among the detector's modules, so it imports the backbone, which the
backbone-level modules here (imported by the backbone itself) cannot."""
import re
from typing import Dict, List, Sequence

import torch.nn as nn

from mmdet_runsafe.class_order import load_checkpoint_of_classes
from mmdet_runsafe.errors import CheckpointError, InputError
from mmdet_runsafe.runner_state import unwrap_model

from ..vanillanet import VanillaNet
from .backbone_weights import check_same_norm, recorded_backbone
from .fit import check_fits, key_differences
from .forms import adopt_meta_act_learn

# What a checkpoint that does not fit can be told, where a Runner loads it (CheckpointFitHook).
REPLACED_HINT = ('If you replaced these parts on purpose (fine-tuning to other classes), name '
                 'them in the config: default_hooks.checkpoint_fit.replaced=[...] (docs/'
                 'reliability.md)')


def without_module_prefix(state: Dict) -> Dict:
    """A state dict saved from a DDP-wrapped model, keyed as the bare model's."""
    return {re.sub(r'^module\.', '', k): v for k, v in state.items()}


def check_detector_fits(model: nn.Module, state: Dict, filename: str,
                        replaced: Sequence[str] = (), hint: str = REPLACED_HINT) -> List[str]:
    """Raise a CheckpointError unless ``state`` (a detector's state dict, keys possibly
    prefixed by ``module.``) holds every tensor of ``model`` in its shape and nothing else: the
    VanillaNet's part first, whose message names act_num, arch and layout, then the rest.

    Keys under the module names in ``replaced`` (heads replaced on purpose, e.g.
    ``roi_head.bbox_head.fc_cls`` when fine-tuning to another number of classes) may be
    missing or of another shape; they are left at their initialisation. Returns the file's
    keys to drop for that (those of another shape). ``hint`` ends the message of a file that
    does not fit."""
    return _check_unwrapped_fits(unwrap_model(model), state, filename, replaced, hint)


def _check_unwrapped_fits(model: nn.Module, state: Dict, filename: str,
                          replaced: Sequence[str] = (), hint: str = REPLACED_HINT) -> List[str]:
    """``check_detector_fits`` for a model out of its wrappers."""
    expected = model.state_dict()
    file_keys = dict(zip(without_module_prefix(state), state))
    free = tuple(f'{name}.' for name in replaced)
    backbones = tuple(f'{name}.' for name, m in model.named_modules()
                      if isinstance(m, VanillaNet) and not f'{name}.'.startswith(free))
    for prefix in backbones:
        check_fits({k[len(prefix):]: v for k, v in expected.items() if k.startswith(prefix)},
                   {k[len(prefix):]: state[file_keys[k]] for k in file_keys
                    if k.startswith(prefix)}, filename)
    others = backbones + free  # the backbones are checked above, the free parts not at all
    problems = key_differences(
        {k: v for k, v in expected.items() if not k.startswith(others)},
        {k: state[file_keys[k]] for k in file_keys if not k.startswith(others)})
    if problems:
        raise CheckpointError(
            f'{filename} does not fit this {type(model).__name__}: {"; ".join(problems)}. '
            f'{hint}')
    return [file_keys[k] for k in expected if k.startswith(free) and k in file_keys
            and state[file_keys[k]].shape != expected[k].shape]


def check_detector_norm(model: nn.Module, checkpoint: dict, filename: str):
    """Refuse a checkpoint whose recorded config (MMEngine writes it into every checkpoint's
    meta) trained the model's VanillaNet backbone with another norm (type, eps) than the
    model's: no tensor holds the eps, and with another one every output differs, fused or not
    (a converted file is refused alike, deploy/convert.py). A fused backbone has no norm left
    to compare; a file that records no config, or one this version cannot build, is not
    checked."""
    _check_unwrapped_norm(unwrap_model(model), checkpoint, filename)


def _check_unwrapped_norm(model: nn.Module, checkpoint: dict, filename: str):
    """``check_detector_norm`` for a model out of its wrappers."""
    backbone = getattr(model, 'backbone', None)
    if not isinstance(backbone, VanillaNet) or backbone.deploy:
        return
    try:
        recorded = recorded_backbone(checkpoint, filename)
    except InputError:
        # A record this version cannot build (another version's arguments, the authors'
        # MMDetection 2.x config) says nothing it can compare; the file's tensors are checked.
        return
    if recorded is not None:
        check_same_norm(recorded, backbone, filename, "the config's model.backbone.norm_cfg")


def load_detector_weights(model: nn.Module, checkpoint: str, device='cpu',
                          classes: Sequence[str] = ()):
    """A detector checkpoint into ``model`` (a bare detector, as the deploy functions build
    it), refused in one line unless its classes (``meta.dataset_meta.classes``, where it has
    them) are ``classes`` (the config's), it fits exactly and its recorded norm is the
    model's, as a test's checkpoint is (CheckpointFitHook): otherwise every label would name
    another class, or every output differ. All of a checkpoint's checks, in this order: read
    as data and its classes (the safety package, in one call), then VanillaNet's (layout,
    act_num and widths, the rest of the detector, the norm), then the load."""
    loaded = load_checkpoint_of_classes(checkpoint, classes, map_location=device)
    adopt_meta_act_learn(loaded)
    state = loaded.get('state_dict', loaded)
    _check_unwrapped_fits(model, state, checkpoint, hint='Give the checkpoint of this config, or '
                                                         'the config of this checkpoint')
    _check_unwrapped_norm(model, loaded, checkpoint)
    # Every tensor is there in its shape (bar BN counters of old files). A checkpoint from the
    # middle of deep training sets the backbone's act_learn as it loads (a key of its state
    # dict), so that fusing it is refused.
    model.load_state_dict(without_module_prefix(state), strict=False)
