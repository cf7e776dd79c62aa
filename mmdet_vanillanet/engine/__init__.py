from .deep_training_hook import DeepTrainingHook
from .deploy_hook import VanillaNetDeployHook
from .layer_decay_optimizer import VanillaNetLayerDecayOptimizerConstructor

__all__ = ['DeepTrainingHook', 'VanillaNetDeployHook',
           'VanillaNetLayerDecayOptimizerConstructor']
