"""The parts of a training run that MMDetection builds from a config's hooks and optimizer."""
from .atomic_checkpoint_hook import AtomicCheckpointHook
from .checkpoint_fit_hook import CheckpointFitHook
from .class_order_hook import ClassOrderHook
from .deep_training_hook import VanillaNetDeepTrainingHook
from .deploy_hook import VanillaNetDeployHook
from .layer_decay_optimizer import VanillaNetLayerDecayOptimizerConstructor
from .non_finite_hook import NonFiniteError, StopOnNonFiniteHook
from .random_state_hook import RandomStateHook
from .resume_lr_hook import ResumeLrFromConfigHook
from .weights_only_checkpoint_hook import WeightsOnlyCheckpointHook
from .work_dir_lock_hook import WorkDirLockHook

__all__ = ['AtomicCheckpointHook', 'CheckpointFitHook', 'ClassOrderHook',
           'VanillaNetDeepTrainingHook', 'VanillaNetDeployHook',
           'VanillaNetLayerDecayOptimizerConstructor', 'NonFiniteError', 'StopOnNonFiniteHook',
           'RandomStateHook', 'ResumeLrFromConfigHook', 'WeightsOnlyCheckpointHook',
           'WorkDirLockHook']
