"""The hooks a config declares to make any MMDetection run safe (configs/_base_/runsafe_runtime.py):
atomic checkpoints, the class order of COCO files, exact resume (random state, the config's lr),
the stop on a NaN or a blow-up, checkpoints that load with weights_only, one run per work dir.

Importing it (a config's ``custom_imports = dict(imports=['mmdet_runsafe.hooks'])``) registers
them, with MMEngine's file backend for atomic checkpoint writes, in MMDetection's registries, and
allow-lists what reads back the data MMEngine writes into checkpoints for weights_only loading
(``serialization.allow_runner_checkpoint_types``), so that any tool, ours or MMDetection's, can
resume and test the runs under torch >= 2.6. It changes nothing else."""
from ..serialization import allow_runner_checkpoint_types
from .atomic_checkpoint_hook import AtomicCheckpointHook
from .class_order_hook import ClassOrderHook
from .non_finite_hook import NonFiniteError, StopOnNonFiniteHook
from .random_state_hook import RandomStateHook
from .resume_lr_hook import ResumeLrFromConfigHook
from .weights_only_checkpoint_hook import WeightsOnlyCheckpointHook
from .work_dir_lock_hook import WorkDirLockHook

__all__ = ['AtomicCheckpointHook', 'ClassOrderHook', 'NonFiniteError', 'StopOnNonFiniteHook',
           'RandomStateHook', 'ResumeLrFromConfigHook', 'WeightsOnlyCheckpointHook',
           'WorkDirLockHook']

allow_runner_checkpoint_types()
