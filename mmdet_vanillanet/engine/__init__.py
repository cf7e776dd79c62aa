from .deep_training_hook import DeepTrainingHook
from .deploy_hook import VanillaNetDeployHook
from .finite_loss_hook import NonFiniteLossError, StopOnNonFiniteLossHook
from .layer_decay_optimizer import VanillaNetLayerDecayOptimizerConstructor
from .random_state_hook import RandomStateHook

__all__ = ['DeepTrainingHook', 'VanillaNetDeployHook', 'NonFiniteLossError',
           'StopOnNonFiniteLossHook', 'VanillaNetLayerDecayOptimizerConstructor',
           'RandomStateHook']
