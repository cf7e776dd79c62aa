"""The error VanillaNet's network modules (the backbone, its blocks and activation, fusion, the
arch settings, ``ops/``) raise for an argument set wrongly: the message names the argument and
what is allowed. The network imports no run-safety code, so the error says it is the user's to
fix by ``user_error`` (``mmdet_runsafe.errors.is_user_error``): the tools print it on one line."""


class ConfigError(ValueError):
    """A VanillaNet argument (arch, act_learn, act_impl, norm_cfg, out_indices, ...) that a
    config or caller set wrongly."""
    user_error = True
