"""The VanillaNet's checkpoint files: the forms the weights come in and what their tensors say
(forms.py), whether a file fits a model (fit.py), and loading one into a backbone or a detector.
Reading a file itself (weights_only, URLs, model-zoo names) is the plugin's ``serialization``."""
