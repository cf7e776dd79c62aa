"""The parts of a training run that MMDetection builds from a config's hooks and optimizer."""
from .deep_training_hook import VanillaNetDeepTrainingHook
from .deploy_hook import VanillaNetDeployHook
from .finite_loss_hook import NonFiniteLossError, StopOnNonFiniteLossHook
from .layer_decay_optimizer import VanillaNetLayerDecayOptimizerConstructor
from .random_state_hook import RandomStateHook
from .weights_only_checkpoint_hook import WeightsOnlyCheckpointHook

__all__ = ['VanillaNetDeepTrainingHook', 'VanillaNetDeployHook', 'NonFiniteLossError',
           'StopOnNonFiniteLossHook', 'VanillaNetLayerDecayOptimizerConstructor',
           'RandomStateHook', 'WeightsOnlyCheckpointHook']
