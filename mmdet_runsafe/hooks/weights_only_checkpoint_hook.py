"""Checkpoints that load with weights_only=True (torch >= 2.6's default), whoever loads them,
MMDetection's own tools included, without letting a file change the loading process."""
from mmdet.registry import HOOKS
from mmengine.hooks import Hook
from mmengine.logging.history_buffer import HistoryBuffer

from ..serialization import WeightsOnlyHistoryBuffer


@HOOKS.register_module()
class WeightsOnlyCheckpointHook(Hook):
    """Writes the message hub's history buffers of every checkpoint as
    :class:`~mmdet_runsafe.serialization.WeightsOnlyHistoryBuffer`: their data only, where
    MMEngine's HistoryBuffer would also write its statistics methods as ``getattr`` calls.
    Importing mmdet_runsafe.hooks allow-lists ours for every weights_only load, so MMDetection's own
    tools resume and test these checkpoints; MMEngine's class and ``getattr`` are read by our
    loaders only (``serialization``: allowing them process-wide would let any file in the
    process reach ``getattr``). After ``--resume`` the loaded buffers carry on as the run's
    own. Declared in ``configs/_base_/runsafe_runtime.py``.

    Example (in a config)::

            default_hooks = dict(weights_only=dict(type='WeightsOnlyCheckpointHook'))
    """

    priority = 'VERY_LOW'

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        # The message hub's state holds deep copies, so retyping them touches nothing live.
        for buffer in checkpoint.get('message_hub', {}).get('log_scalars', {}).values():
            if type(buffer) is HistoryBuffer:
                buffer.__class__ = WeightsOnlyHistoryBuffer
