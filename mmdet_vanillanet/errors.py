"""Errors that are the user's to fix: the tools print their message on one line, no traceback.

Every one is an :class:`InputError`; a checkpoint that cannot be read or does not fit is a
:class:`CheckpointError`, one whose write was cut short a :class:`TruncatedCheckpointError`
(``--resume`` passes over it for an earlier one).
"""


class InputError(ValueError):
    """A bad argument, config value or file; the message names it and what is allowed."""


class CheckpointError(InputError, RuntimeError):
    """A checkpoint that cannot be read, or that does not fit the model."""


class TruncatedCheckpointError(CheckpointError):
    """A checkpoint whose write was cut short (a kill, a full disk): an earlier one may do."""


def deploy_layout_error(filename: str, purpose: str, remedy: str) -> CheckpointError:
    """The one message for a fused checkpoint where training-layout weights are needed."""
    return CheckpointError(
        f'{filename} holds a fused (deploy-layout) VanillaNet, whose BN statistics and separate '
        f'1x1 convs were merged away, so it cannot {purpose}; {remedy}')
