# What every VanillaNet run needs, whichever tool starts it (ours or MMDetection's own
# tools/train.py and tools/test.py): the plugin, and the hooks that make a run safe
# (runsafe_runtime.py) with VanillaNet's own checkpoint check.
_base_ = ['./runsafe_runtime.py']
custom_imports = dict(imports=['mmdet_runsafe.hooks', 'mmdet_vanillanet'],
                      allow_failed_imports=False)
default_hooks = dict(
    # load_from, --resume and test checkpoints must fit the model: no silent partial load
    # (replaced=[...] names heads replaced on purpose, for fine-tuning to other classes)
    checkpoint_fit=dict(type='CheckpointFitHook'))
