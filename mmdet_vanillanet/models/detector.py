"""The VanillaNet inside a detector: finding it through model wrappers, checking that a
detector checkpoint fits and loading it, and fusing it for deployment (the one function the
deploy hook, tools/test.py --deploy, the exporters and the benchmark use).

The detector-level fit check lives here, not in checkpoint_fit.py: it finds the VanillaNets
among the detector's modules, and checkpoint_fit.py is imported by the backbone itself."""
import copy
import re
from typing import Dict, List, Sequence

import torch.nn as nn
from mmengine.logging import print_log
from mmengine.model import BaseTTAModel, is_model_wrapper

from ..class_order import check_checkpoint_classes
from ..errors import CheckpointError, InputError
from ..serialization import safe_load
from .checkpoint_fit import OPTIONAL_KEYS, check_fits, key_problems
from .checkpoint_forms import adopt_meta_act_learn, count_params
from .vanillanet import VanillaNet


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside a DDP/FSDP (or other MMEngine) wrapper or a test-time-augmentation
    model (``--tta``; both, under distributed testing), or the model itself."""
    while is_model_wrapper(model) or isinstance(model, BaseTTAModel):
        model = model.module
    return model


def vanillanets_of(model: nn.Module) -> List[VanillaNet]:
    """Every VanillaNet inside ``model`` (wrapped or not); an error when there is none."""
    module = unwrap_model(model)
    found = [m for m in module.modules() if isinstance(m, VanillaNet)]
    if not found:
        raise InputError(f'{type(module).__name__} has no VanillaNet backbone')
    return found


def fuse_detector(model: nn.Module, inplace: bool = True) -> nn.Module:
    """Fuse every VanillaNet inside ``model`` (a detector, wrapped or not, or a bare backbone)
    for deployment, and return the fused model: ``model`` itself, or with ``inplace=False`` a
    fused deep copy, ``model`` untouched (as timm's ``reparameterize_model``). A backbone
    saved before deep training ended (act_learn < 1) is refused: fusing it would change what
    it computes.

    Example::

        from mmdet.apis import init_detector
        from mmdet_vanillanet.apis import fuse_detector

        model = init_detector('configs/mask_rcnn_vanillanet13_coco.py', 'epoch_12.pth')
        deployed = fuse_detector(model, inplace=False)  # model itself stays trainable
        deployed.backbone.deploy  # True: every block is one 1x1 conv and one activation
    """
    if not inplace:
        model = copy.deepcopy(model)
    for backbone in vanillanets_of(model):
        if not backbone.deploy:
            before = count_params(backbone.state_dict())
            backbone.switch_to_deploy()
            after = count_params(backbone.state_dict())
            print_log(f'fused VanillaNet-{backbone.arch_name}: {before / 1e6:.2f}M -> '
                      f'{after / 1e6:.2f}M parameters', logger='current')
    return model


def without_module_prefix(state: Dict) -> Dict:
    """A state dict saved from a DDP-wrapped model, keyed as the bare model's."""
    return {re.sub(r'^module\.', '', k): v for k, v in state.items()}


def check_detector_fits(model: nn.Module, state: Dict, filename: str,
                        replaced: Sequence[str] = ()) -> List[str]:
    """Raise a CheckpointError unless ``state`` (a detector's state dict, keys possibly
    prefixed by ``module.``) holds every tensor of ``model`` in its shape and nothing else: the
    VanillaNet's part first, whose message names act_num, arch and layout, then the rest.

    Keys under the module names in ``replaced`` (heads replaced on purpose, e.g.
    ``roi_head.bbox_head.fc_cls`` when fine-tuning to another number of classes) may be
    missing or of another shape; they are left at their initialisation. Returns the file's
    keys to drop for that (those of another shape)."""
    model = unwrap_model(model)
    expected = model.state_dict()
    file_keys = dict(zip(without_module_prefix(state), state))
    free = tuple(f'{name}.' for name in replaced)
    backbones = tuple(f'{name}.' for name, m in model.named_modules()
                      if isinstance(m, VanillaNet) and not f'{name}.'.startswith(free))
    for prefix in backbones:
        check_fits({k[len(prefix):]: v for k, v in expected.items() if k.startswith(prefix)},
                   {k[len(prefix):]: state[file_keys[k]] for k in file_keys
                    if k.startswith(prefix)}, filename)
    rest = [k for k in expected if not k.startswith(backbones)]
    missing = [k for k in rest if k not in file_keys and not k.startswith(free)
               and not OPTIONAL_KEYS.match(k)]
    unexpected = [k for k in file_keys if k not in expected
                  and not k.startswith(backbones + free)]
    wrong = [f'{k}: file {tuple(state[file_keys[k]].shape)} vs model {tuple(expected[k].shape)}'
             for k in rest if k in file_keys and not k.startswith(free)
             and state[file_keys[k]].shape != expected[k].shape]
    if missing or unexpected or wrong:
        problems = key_problems(wrong, missing, unexpected)
        raise CheckpointError(
            f'{filename} does not fit this {type(model).__name__}: {"; ".join(problems)}. '
            f'If you replaced these parts on purpose (fine-tuning to other classes), name '
            f'them in the config: default_hooks.checkpoint_fit.replaced=[...] (docs/'
            f'reliability.md)')
    return [file_keys[k] for k in expected if k.startswith(free) and k in file_keys
            and state[file_keys[k]].shape != expected[k].shape]


def load_detector_weights(model: nn.Module, checkpoint: str, device='cpu',
                          classes: Sequence[str] = ()):
    """A detector checkpoint into ``model``, refused in one line unless it fits exactly and its
    classes (``meta.dataset_meta.classes``, where it has them) are ``classes`` (the config's),
    as a test's checkpoint is (CheckpointFitHook): otherwise every label would name another
    class."""
    loaded = safe_load(checkpoint, map_location=device)
    check_checkpoint_classes(checkpoint, loaded, classes)
    adopt_meta_act_learn(loaded)
    state = loaded.get('state_dict', loaded)
    check_detector_fits(model, state, checkpoint)
    # Every tensor is there in its shape (bar BN counters of old files). A checkpoint from the
    # middle of deep training sets the backbone's act_learn as it loads (a key of its state
    # dict), so that fusing it is refused.
    model.load_state_dict(without_module_prefix(state), strict=False)
