# What makes any MMDetection run safe, whatever its backbone, under any tool (ours or
# MMDetection's own tools/train.py and tools/test.py): the run-safety package, and its hooks.
# default_hooks is a dict, so a config that sets other default hooks (or the checkpoint hook's
# interval, max_keep_ckpts, save_best) keeps these.
_base_ = ['mmdet::_base_/default_runtime.py']
custom_imports = dict(imports=['mmdet_runsafe.hooks'], allow_failed_imports=False)
default_hooks = dict(
    # MMEngine's checkpoint hook, with atomic writes and outdated files deleted only after the
    # new one is in place: a kill or a full disk never leaves a run without a checkpoint
    checkpoint=dict(type='AtomicCheckpointHook'),
    # labels mean the config's classes: a COCO file listing them in another order is refused
    class_order=dict(type='ClassOrderHook'),
    # exact --resume, seeded or not: the seed and the generators' states travel in checkpoints
    random_state=dict(type='RandomStateHook'),
    # --resume with another optim_wrapper.optimizer.lr really changes the lr
    resume_lr=dict(type='ResumeLrFromConfigHook'),
    # a NaN or infinite loss, weight or BN statistic stops the run before it is checkpointed
    non_finite=dict(type='StopOnNonFiniteHook'),
    # checkpoints that load with weights_only=True (torch >= 2.6's default)
    weights_only=dict(type='WeightsOnlyCheckpointHook'),
    # one training run per work_dir: a second one (or a --resume) while it lives is refused
    work_dir_lock=dict(type='WorkDirLockHook'))
