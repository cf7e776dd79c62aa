"""Parameters and FLOPs of a detector at a given input size (MMEngine's complexity analysis),
counted on one generated image, as MMDetection's get_flops does on a real one."""
import contextlib
import logging
from typing import Tuple

import torch
from mmdet.structures import DetDataSample
from mmengine.analysis import get_model_complexity_info
from mmengine.logging import MMLogger

from mmdet_runsafe.errors import Argument, InputError
from mmdet_runsafe.memory import check_memory
from mmdet_vanillanet.models.series_activation import SeriesActivation


def check_shape(shape: Tuple[int, int]):
    """InputError for a shape (--shape) with a side below 1 pixel."""
    if min(shape) < 1:
        raise InputError(Argument('shape', tuple(shape)), ': height and width must be positive '
                         '(the detector pads them to multiples of 32)')


def pseudo_batch(shape: Tuple[int, int]) -> dict:
    """One image of ``shape`` (H, W), padded to 32 as the test pipeline would; a side below 1
    pixel is an InputError (--shape)."""
    check_shape(shape)
    h, w = shape
    sample = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w),
                                         scale_factor=(1.0, 1.0), batch_input_shape=(h, w)))
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(0))
    return dict(inputs=[image], data_samples=[sample])


class _CounterWarnings(logging.Filter):
    """The counter's warnings of operators it does not count and of modules the trace did not
    call (about 17 lines for a detector; its count is the published tables' convention)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(
            ('Unsupported operator ', 'The following submodules of the model were never called'))


@contextlib.contextmanager
def counter_warnings(shown: bool):
    """MMEngine's FLOPs counter with its warnings shown (``shown``: a tool's --verbose) or
    left out; the counter logs them through MMEngine's current logger."""
    logger, quiet = MMLogger.get_current_instance(), _CounterWarnings()
    if not shown:
        logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


@contextlib.contextmanager
def traceable_activations(model: torch.nn.Module):
    """PyTorch's activations inside: the FLOPs counter traces the model, and a trace cannot
    record a Triton kernel (act_impl='triton' refuses it). The count is the same either way:
    both implementations compute the same depthwise convolutions."""
    acts = [m for m in model.modules() if isinstance(m, SeriesActivation)]
    chosen = [m.act_impl for m in acts]
    for m in acts:
        m.act_impl = 'torch'
    try:
        yield model
    finally:
        for m, act_impl in zip(acts, chosen):
            m.act_impl = act_impl


def check_input_memory(model: torch.nn.Module, shape: Tuple[int, int]):
    """InputError when the activations of ``model``'s backbone and neck (its heads add more)
    on an image of ``shape`` (H, W, padded to 32) would exceed the available memory."""
    check_shape(shape)
    h, w = shape
    side = getattr(model.backbone, 'min_input_size', 32)
    module = torch.nn.Sequential(model.backbone, model.neck) if getattr(model, 'with_neck', False) \
        else model.backbone
    padded = (1, 3, -(-h // 32) * 32, -(-w // 32) * 32)
    check_memory(module, [padded], Argument('shape', (h, w)), probe_side=max(64, 2 * side))


@torch.no_grad()
def detector_complexity(model: torch.nn.Module, shape: Tuple[int, int]) -> dict:
    """{'flops': ..., 'params': ..., 'input_shape': ...} of the whole detector's forward; a
    ``shape`` whose backbone and neck activations alone would not fit in the available memory
    is refused before any image of that size is made."""
    model.eval()
    check_input_memory(model, shape)
    data = model.data_preprocessor(pseudo_batch(shape), False)
    samples = data['data_samples']

    class Forward(torch.nn.Module):  # binds the samples, so that the tracer sees one input
        def __init__(self):
            super().__init__()
            self.detector = model

        def forward(self, inputs):
            return self.detector(inputs, samples, mode='tensor')

    with traceable_activations(model):
        info = get_model_complexity_info(Forward(), inputs=(data['inputs'], ), show_table=False,
                                         show_arch=False)
    return dict(flops=info['flops'], params=info['params'],
                input_shape=tuple(data['inputs'].shape[-2:]))
