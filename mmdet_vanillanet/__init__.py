"""VanillaNet for MMDetection 3.x: the plugin that configs import (``custom_imports``).

Importing it registers the backbone (``models``) and the training-time parts (``engine``) in
MMDetection's registries, and MMEngine's file backend for atomic checkpoint writes
(``engine.atomic_checkpoint_hook``), and allow-lists what reads back the data MMEngine writes
into checkpoints for weights_only loading (``serialization``), so that any tool, ours or
MMDetection's, can resume and test our runs under torch >= 2.6. It changes nothing else. Our
command-line tools' support code lives in ``mmdet_vanillanet.toolkit``, and what a user calls
to deploy in ``mmdet_vanillanet.deploy`` (through ``mmdet_vanillanet.apis``); the plugin imports
neither.
"""
from . import engine  # noqa: F401  (registers the hooks and the optimizer constructor)
from .models import VanillaNet  # noqa: F401
from .serialization import allow_runner_checkpoint_types
from .version import __version__  # noqa: F401

allow_runner_checkpoint_types()
