"""Reading an exported file as quantization and inference need it: its metadata, whether it is
quantized, its fixed input size, the convs it runs in float, and whether its weights are a
checkpoint's (``weight_mismatches``).

A quantized file cannot match the checkpoint's outputs to fp32 precision, and a relative
tolerance on its outputs does not separate the right checkpoint from a neighbouring one of the
same run (the demo model's RPN outputs: 0.8 % off with the right checkpoint, 2.3 % with the
epoch before). Its weights can be compared exactly: dequantized, the right checkpoint's lie
within half a quantization step of the file's (rounding), the epoch before's 36 steps away
(benchmarks/int8_checkpoint_check.py).
"""
import copy
import json
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from mmdet.registry import MODELS
from mmengine.config import Config
from mmengine.registry import init_default_scope

from mmdet_runsafe.errors import InputError

from .onnx_export import backbone_metadata, onnx_packages

QUANTIZATION_KEY = 'quantization'  # the metadata entry quantize_onnx writes (JSON)
QDQ_OPS = ('QuantizeLinear', 'DequantizeLinear')
# The export's modules are under ExportedPart.detector: its initializers are named so.
EXPORTED_PREFIX = 'detector.'
WEIGHT_STEPS = 1.0  # rounding puts the right weights within 0.5 step; 1.0 leaves float slack


def read_metadata(model) -> Dict[str, str]:
    return {entry.key: entry.value for entry in model.metadata_props}


def is_quantized(model) -> bool:
    return QUANTIZATION_KEY in read_metadata(model) or any(
        node.op_type in QDQ_OPS for node in model.graph.node)


def quantization_record(meta: Dict[str, str], path: str) -> Optional[dict]:
    """What quantize_onnx wrote into a file's metadata, or None for a float file; an entry
    that is not a JSON object is an InputError naming ``path``."""
    if QUANTIZATION_KEY not in meta:
        return None
    try:
        record = json.loads(meta[QUANTIZATION_KEY])
    except ValueError:
        record = None
    if not isinstance(record, dict):
        raise InputError(f'{path}: its metadata {QUANTIZATION_KEY!r} is not the JSON object '
                         f'tools/quantize_onnx.py writes ({meta[QUANTIZATION_KEY]!r:.60}); '
                         f'quantize the exported file again')
    return record


# The data preprocessor's settings that decide the tensors a file is given, with
# DetDataPreprocessor's defaults: a quantized file's ranges were measured on such tensors.
PREPROCESSING = dict(mean=None, std=None, bgr_to_rgb=False, rgb_to_bgr=False,
                     pad_size_divisor=1, pad_value=0)


def preprocessing_of(cfg: Config) -> dict:
    """The config's data preprocessor's normalisation, channel order and padding, as JSON
    values (numbers as floats, sequences as lists)."""
    settings = cfg.model.get('data_preprocessor') or {}

    def plain(value):
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return float(value) if isinstance(value, (int, float)) and \
            not isinstance(value, bool) else value

    return {key: plain(settings.get(key, default)) for key, default in PREPROCESSING.items()}


def preprocessing_differences(recorded, cfg: Config) -> List[str]:
    """'mean [0.0, 0.0, 0.0] where the config has [123.675, ...]' for each setting in which a
    quantized file's ``recorded`` preprocessing differs from the config's."""
    wanted = preprocessing_of(cfg)
    if not isinstance(recorded, dict):
        return [f'preprocessing {recorded!r:.60} where the config has {wanted}']
    return [f'{key} {recorded.get(key)!r} where the config has {value!r}'
            for key, value in wanted.items() if recorded.get(key) != value]


def check_file_fits_config(path: str, meta: Dict[str, str], cfg: Config):
    """The file's VanillaNet (arch, widths, act_num) must be the config's."""
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    backbone_cfg = copy.deepcopy(cfg.model.backbone)
    backbone_cfg.init_cfg = None  # no download: only the arch is compared
    wrong = [f'{key} {meta.get(key)} where the config has {value}' for key, value
             in backbone_metadata(MODELS.build(backbone_cfg)).items() if meta.get(key) != value]
    if wrong:
        raise InputError(f'{path} does not fit the config: {"; ".join(wrong)}; export it from '
                         f'this config')


def static_input_shape(model) -> Optional[Tuple[int, int]]:
    """(H, W) of a file exported with a fixed input size, None for dynamic height or width."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    sides = [d.dim_value if d.HasField('dim_value') else None for d in dims[2:]]
    return tuple(sides) if None not in sides else None


def float_convs(model) -> List[str]:
    """Names of the convs whose weight is a plain initializer (not a DequantizeLinear's
    output): what a QDQ file runs in float."""
    produced = {out: node.op_type for node in model.graph.node for out in node.output}
    return sorted(node.name for node in model.graph.node
                  if node.op_type == 'Conv' and produced.get(node.input[1]) != 'DequantizeLinear')


def weight_differences(path: str, state: Dict[str, 'torch.Tensor'],  # noqa: F821
                       prefixes: Sequence[str]) -> List[Tuple[str, float, bool]]:
    """The file's weights of the modules under ``prefixes`` (e.g. 'rpn_head.') against
    ``state`` (a detector's state dict), one (name, largest difference, quantized) per tensor
    the file holds: a quantized one dequantized, its difference in quantization steps; a float
    one's relative to its largest magnitude."""
    onnx, _ = onnx_packages('checking a quantized file')
    arrays = {init.name: onnx.numpy_helper.to_array(init).astype(np.float64)
              for init in onnx.load(path).graph.initializer}
    rows = []
    for name, tensor in state.items():
        key = EXPORTED_PREFIX + name
        if not name.startswith(tuple(prefixes)):
            continue
        expected = tensor.detach().cpu().double().numpy()
        if key + '_quantized' in arrays:
            got, step = dequantized(arrays, key, expected.ndim)
            rows.append((name, float((np.abs(got - expected) / step).max()), True))
        elif key in arrays:
            scale = max(float(np.abs(expected).max()), 1e-12)
            rows.append((name, float(np.abs(arrays[key] - expected).max()) / scale, False))
    return rows


def weight_mismatches(path: str, state: Dict[str, 'torch.Tensor'],  # noqa: F821
                      prefixes: Sequence[str]) -> Tuple[int, List[str]]:
    """``weight_differences`` judged: more than WEIGHT_STEPS quantization steps, or 1e-5 of a
    float weight's magnitude, is a mismatch. Returns the number of tensors compared and a
    description of each mismatch."""
    rows = weight_differences(path, state, prefixes)
    wrong = [f'{name} by {diff:.1f} quantization steps' if quantized
             else f'{name} by {diff:.1e} of its magnitude' for name, diff, quantized in rows
             if diff > (WEIGHT_STEPS if quantized else 1e-5)]
    return len(rows), wrong


def dequantized(arrays: Dict[str, np.ndarray], key: str, ndim: int):
    """(float values, step broadcastable to them) of the quantized initializer ``key``."""
    # A weight's scale is <name>_scale, a bias's (int32, scale of input x weight)
    # <name>_quantized_scale.
    base = key if key + '_scale' in arrays else key + '_quantized'
    scale = arrays[base + '_scale']
    zero = arrays.get(base + '_zero_point', np.zeros_like(scale))
    shape = [-1] + [1] * (ndim - 1) if scale.ndim else []
    scale, zero = scale.reshape(shape), zero.reshape(shape)
    return (arrays[key + '_quantized'] - zero) * scale, scale
