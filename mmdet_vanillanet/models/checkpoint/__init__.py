"""The VanillaNet's checkpoint files: the forms the weights come in and what their tensors say
(forms.py), the config a file records (recorded_config.py), whether a file fits a model (fit.py),
a file into a backbone, or fused by the training network it describes (backbone_weights.py),
and a detector checkpoint checked and loaded (detector_weights.py). Reading a file itself
(weights_only, URLs, model-zoo names) is ``mmdet_runsafe.serialization``."""
