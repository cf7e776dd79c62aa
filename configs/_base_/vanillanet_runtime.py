# What every VanillaNet run needs, whichever tool starts it (ours or MMDetection's own
# tools/train.py and tools/test.py): the plugin, and the hooks that make a run reliable.
# default_hooks is a dict, so a config that sets other default hooks keeps these.
_base_ = ['mmdet::_base_/default_runtime.py']
custom_imports = dict(imports=['mmdet_vanillanet'], allow_failed_imports=False)
default_hooks = dict(
    # exact --resume: Python's, numpy's and torch's generator states travel in each checkpoint
    random_state=dict(type='RandomStateHook'),
    # a NaN or infinite loss stops the run, naming the iteration, before it is checkpointed
    non_finite_loss=dict(type='StopOnNonFiniteLossHook'),
    # checkpoints that load with weights_only=True (torch >= 2.6's default)
    weights_only=dict(type='WeightsOnlyCheckpointHook'))
