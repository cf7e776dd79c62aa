"""VanillaNet for MMDetection 3.x. Importing the package registers everything it provides."""
from . import distributed  # noqa: F401  (registers CPUDistributedDataParallel)
from .engine import (DeepTrainingHook, VanillaNetDeployHook,  # noqa: F401
                     VanillaNetLayerDecayOptimizerConstructor)
from .models import VanillaNet  # noqa: F401  (registers the backbone in mmdet's MODELS)
from .serialization import install_safe_checkpointing

install_safe_checkpointing()

__version__ = '0.1.0'
