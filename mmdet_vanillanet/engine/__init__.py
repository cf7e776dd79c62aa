"""VanillaNet's own parts of a training run, built from a config's hooks and optimizer: the
deep-training schedule, fusing at the end, checkpoints fitted to the backbone, layer decay."""
from .checkpoint_fit_hook import CheckpointFitHook
from .deep_training_hook import VanillaNetDeepTrainingHook
from .deploy_hook import VanillaNetDeployHook
from .layer_decay_optimizer import VanillaNetLayerDecayOptimizerConstructor

__all__ = ['CheckpointFitHook', 'VanillaNetDeepTrainingHook', 'VanillaNetDeployHook',
           'VanillaNetLayerDecayOptimizerConstructor']
