"""VanillaNet for MMDetection 3.x: the plugin that configs import (``custom_imports``).

Importing it registers the backbone (``models``) and the training-time parts (``engine``) in
MMDetection's registries, and allow-lists the types MMEngine writes into checkpoints for
weights_only loading (``serialization``), so that any tool, ours or MMDetection's, can resume
and test our runs under torch >= 2.6. It changes nothing else. Our command-line tools'
support code lives in ``mmdet_vanillanet.toolkit``, which the plugin never imports.
"""
from .engine import (RandomStateHook, StopOnNonFiniteLossHook,  # noqa: F401
                     VanillaNetDeepTrainingHook, VanillaNetDeployHook,
                     VanillaNetLayerDecayOptimizerConstructor, WeightsOnlyCheckpointHook)
from .models import VanillaNet  # noqa: F401
from .serialization import allow_runner_checkpoint_types

allow_runner_checkpoint_types()

__version__ = '0.2.0'
