"""The ways a config and a checkpoint take through the packages: which of their modules run, in
order, and how often control climbs back to a higher layer (issue 28: a reader follows a config
or a checkpoint down the layers once, not up and down).

The layers, from the architecture (CONTRIBUTING.md's layout), top to bottom:

0. ``vanillanet_toolkit`` (tools/vanillanet_toolkit): the code our tools share;
1. ``mmdet_vanillanet.apis``, ``deploy``, ``engine``: what a user, a tool or a config calls on
   a model (the deploy API, VanillaNet's hooks);
2. the rest of ``mmdet_vanillanet``, VanillaNet's model: its network (``models``, ``ops``,
   ``config_error``), the VanillaNet inside a detector (``models.detector``) and its weights
   (``models.checkpoint``). The network and its weights are one layer because each calls the
   other: the backbone loads its released weights (``init_weights``), and loading or fusing a
   file builds the training network it describes and runs its ``switch_to_deploy``;
3. ``mmdet_runsafe``: run safety for any MMDetection run, which knows nothing of the others.

A module's layer is that of the longest prefix above that names it. Control is in the module of
the innermost frame that runs the packages' code (frames of MMEngine, MMDetection or torch
between them leave it where it was); a climb is a change of that module to one of a higher
layer, whether by a return or by a call (the run-safety checks that build a backbone through
MMDetection's registry call up into the network).

- A config's way: ``vanillanet_toolkit.runs.build_train_runner`` on the toy config, until MMEngine's
  Runner is built (``Runner.__init__``): what follows is the Runner's, not the checks'.
- A checkpoint's way through ``export_onnx``: from the call that hands the checkpoint to
  ``models/checkpoint/`` (where a checkpoint's checks live) until that call returns to the
  deploy function that made it (the climb back to it included). Building the detector from
  the config, fusing it and exporting it are the config's and the network's, not the file's.
"""
import argparse
import os.path as osp
import sys
from typing import Callable, List, NamedTuple

from mmengine.config import DictAction
from mmengine.runner import Runner

import mmdet_runsafe
import mmdet_vanillanet
import vanillanet_toolkit
from helpers import CONFIG, save_toy_checkpoint, toy_options
from mmdet_vanillanet.deploy.onnx_export import ExportedPart, export_onnx
from vanillanet_toolkit.runs import build_train_runner

LAYERS = (('vanillanet_toolkit', 0),
          ('mmdet_vanillanet.apis', 1), ('mmdet_vanillanet.deploy', 1),
          ('mmdet_vanillanet.engine', 1),
          ('mmdet_vanillanet', 2),
          ('mmdet_runsafe', 3))
ROOTS = {osp.dirname(package.__file__) + osp.sep: package.__name__
         for package in (mmdet_vanillanet, mmdet_runsafe, vanillanet_toolkit)}


def layer_of(module: str) -> int:
    return max(((prefix, layer) for prefix, layer in LAYERS
                if module == prefix or module.startswith(prefix + '.')),
               key=lambda entry: len(entry[0]))[1]


def module_of(filename: str):
    """The packages' module a file is, or None for any other file."""
    for root, package in ROOTS.items():
        if filename.startswith(root):
            rel = osp.splitext(filename[len(root):])[0].replace(osp.sep, '.')
            rel = rel[:-len('.__init__')] if rel.endswith('__init__') else rel
            return f'{package}.{rel}' if rel and rel != '__init__' else package
    return None


class Route(NamedTuple):
    modules: List[str]  # the module control is in, each time it changes

    @property
    def climbs(self) -> int:
        return sum(layer_of(b) < layer_of(a) for a, b in zip(self.modules, self.modules[1:]))

    def __str__(self):
        """The modules by layer: each stretch in one layer, its modules once, in order."""
        stretches = []
        for module in self.modules:
            if stretches and stretches[-1][0] == layer_of(module):
                if module not in stretches[-1][1]:
                    stretches[-1][1].append(module)
            else:
                stretches.append((layer_of(module), [module]))
        return ' -> '.join(f'[{layer}] {", ".join(modules)}' for layer, modules in stretches)


def route(call: Callable, *args, starts: Callable = None, until: Callable = None,
          **kwargs) -> Route:
    """The packages' modules ``call(*args, **kwargs)`` runs, in order (see the module's
    docstring): from the first call whose frame ``starts`` (a predicate; default: from the
    start) until that call returns to its caller's module, or until the first call of the
    function ``until``."""
    stack, modules = [], []
    begun, depth, end = starts is None, None, until.__code__ if until else None
    stopped = False

    def profile(frame, event, arg):
        nonlocal begun, depth, stopped
        if stopped or event not in ('call', 'return'):
            return
        if event == 'call':
            if frame.f_code is end:
                stopped = True
                return
            stack.append(module_of(frame.f_code.co_filename) or (stack[-1] if stack else None))
            if not begun and starts(frame):
                begun, depth = True, len(stack)
        elif stack:
            stack.pop()
            stopped = depth is not None and len(stack) < depth
        current = stack[-1] if stack else None
        if begun and current is not None and (not modules or modules[-1] != current):
            modules.append(current)

    sys.setprofile(profile)
    try:
        call(*args, **kwargs)
    finally:
        sys.setprofile(None)
    return Route(modules)


def given_a_checkpoint(path: str) -> Callable:
    """Whether a frame is a call into models/checkpoint/ given the checkpoint ``path``."""
    def starts(frame) -> bool:
        module = module_of(frame.f_code.co_filename) or ''
        return module.startswith('mmdet_vanillanet.models.checkpoint') and any(
            value == path for value in frame.f_locals.values() if isinstance(value, str))
    return starts


def test_a_config_goes_down_the_layers_and_climbs_back_at_most_4_times(data_root, tmp_path):
    """12 climbs (15 modules) before the two packages, 3 now: the train tool's
    checks are one call into the safety package (``preflight.prepare_train_run``), which builds
    the backbone once for the dataset checks and asks the tool which runtime hooks the config
    should declare (``vanillanet_toolkit.runs.runtime_of``, a climb). A ``load_from`` adds the
    layout check of its checkpoint, two climbs more."""
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    options = parser.parse_args(['--cfg-options', *toy_options(data_root)]).cfg_options
    way = route(build_train_runner, CONFIG, work_dir=str(tmp_path / 'run'), cfg_options=options,
                until=Runner.__init__)
    print(f'{way.climbs} climbs: {way}')
    assert way.modules[0] == way.modules[-1] == 'vanillanet_toolkit.runs'
    # The checks ran: the run lock, the dataset's annotations, the launcher.
    for module in ('preflight', 'run_lock', 'coco_annotations', 'launch'):
        assert f'mmdet_runsafe.{module}' in way.modules
    assert way.climbs <= 4


def test_a_checkpoint_goes_through_its_checks_in_one_call_down_and_back(tmp_path):
    """2 climbs (5 before; 3 before the split, which put unwrap_model, asked twice by the
    checks, into the safety package): export_onnx hands the checkpoint to
    models/checkpoint/ once (``load_detector_weights``), which asks the safety package once
    (the file read as data, its classes) and makes VanillaNet's checks (fit, norm) on the bare
    detector before loading it."""
    checkpoint = save_toy_checkpoint(str(tmp_path / 'toy.pth'))
    way = route(export_onnx, CONFIG, checkpoint, str(tmp_path / 'backbone.onnx'),
                shape=(96, 96), starts=given_a_checkpoint(checkpoint), until=ExportedPart.__init__)
    print(f'{way.climbs} climbs: {way}')
    assert way.modules[0] == 'mmdet_vanillanet.models.checkpoint.detector_weights'
    assert way.modules[-1] == 'mmdet_vanillanet.deploy.build'
    # The checks ran: read as data, the classes, the fit (which names act_num, arch, layout)
    # and the recorded norm.
    for module in ('mmdet_runsafe.serialization', 'mmdet_runsafe.class_order',
                   'mmdet_vanillanet.models.checkpoint.fit',
                   'mmdet_vanillanet.models.checkpoint.recorded_config'):
        assert module in way.modules
    assert way.climbs <= 2
