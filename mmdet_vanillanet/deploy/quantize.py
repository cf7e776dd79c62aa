"""INT8 versions of an exported part (``quantize_onnx``, what tools/quantize_onnx.py calls):
onnxruntime's own static quantization (``quantize_static``, QDQ format) calibrated on images of
the config's dataset read as the file reads them (calibration.py).

Two targets, because the two runtimes take different files:

- 'onnxruntime' (the default): uint8 activations, int8 per-channel weights with
  ``reduce_range`` (7-bit weights). onnxruntime's x86 uint8 x int8 kernels on CPUs without VNNI
  (AVX2) multiply pairs with VPMADDUBSW, whose int16 sums saturate when two full-range weights
  meet large activations; 7-bit weights cannot saturate, and cost no AP on the toy model
  (docs/deployment.md has the table).
- 'tensorrt': what TensorRT's explicit quantization takes: symmetric int8 activations (zero point
  0), the float weights in the file behind their own QuantizeLinear/DequantizeLinear pair, one
  pair per consumer, and float biases (TensorRT's parser refuses an int32 DequantizeLinear).
  onnxruntime runs it too, but its CPU kernels run most convs in float then: it is not a fast
  CPU file.

``keep_float`` names groups of nodes that stay in float (``FLOAT_GROUPS``); by default a
two-stage detector's raw file keeps its RPN head float (on the toy Mask R-CNN the only recipe
that kept box and mask AP within 0.01 of fp32 for every calibration draw measured), everything
else is quantized. The recipe, the
calibration data and the float nodes are written into the file's metadata ('quantization').
"""
import contextlib
import dataclasses
import functools
import json
import logging
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Set, Tuple, Union

from mmengine.config import Config

from mmdet_runsafe.config import load_config
from mmdet_runsafe.errors import Argument, InputError
from mmdet_runsafe.input_paths import check_input_file
from mmdet_runsafe.output_paths import new_file_for

from .calibration import CalibrationReader, calibration_inputs, split_dataset_cfg
from .onnx_export import PARTS, check_output_path, onnx_packages
from .quantized_file import (
    EXPORTED_PREFIX,
    QUANTIZATION_KEY,
    check_file_fits_config,
    float_convs,
    is_quantized,
    preprocessing_of,
    read_metadata,
    static_input_shape,
)

TARGETS = ('onnxruntime', 'tensorrt')
METHODS = ('minmax', 'percentile', 'entropy')
# Groups of nodes that can stay float, by the modules their convs' weights belong to (the
# initializers' names, detector.<module path>.weight, under either exporter).
FLOAT_GROUPS = {'stem': ('backbone.stem.', ), 'head': ('rpn_head.', 'bbox_head.'),
                'last_stage': None}  # None: the backbone's last stage, found in the graph


@dataclass
class Recipe:
    """How a file is quantized: the target runtime, the calibration method, and the node
    groups kept float."""
    target: str = 'onnxruntime'
    method: str = 'minmax'
    per_channel: bool = True
    reduce_range: Optional[bool] = None  # None: the target's (True for onnxruntime)
    keep_float: Optional[Tuple[str, ...]] = None  # None: the file's default (resolved)

    def __post_init__(self):
        for name, allowed in (('target', TARGETS), ('method', METHODS)):
            if getattr(self, name) not in allowed:
                raise InputError(Argument(name, getattr(self, name)),
                                 f': choose one of {list(allowed)}')
        if self.keep_float is None:
            return
        self.keep_float = tuple(self.keep_float)
        unknown = [g for g in self.keep_float if g not in FLOAT_GROUPS]
        if unknown:
            raise InputError(Argument('keep_float', unknown),
                             f': choose among {list(FLOAT_GROUPS)}')

    def quantize_static_kwargs(self) -> dict:
        """quantize_static's arguments for this recipe (node exclusions apart)."""
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType
        method = dict(minmax=CalibrationMethod.MinMax, percentile=CalibrationMethod.Percentile,
                      entropy=CalibrationMethod.Entropy)[self.method]
        kwargs = dict(quant_format=QuantFormat.QDQ, per_channel=self.per_channel,
                      weight_type=QuantType.QInt8, calibrate_method=method)
        if self.target == 'onnxruntime':
            kwargs.update(activation_type=QuantType.QUInt8, reduce_range=True, extra_options={})
        else:
            kwargs.update(activation_type=QuantType.QInt8, reduce_range=False, extra_options=dict(
                ActivationSymmetric=True, AddQDQPairToWeight=True, DedicatedQDQPair=True,
                QuantizeBias=False))
        if self.reduce_range is not None:
            kwargs['reduce_range'] = self.reduce_range
        return kwargs


def resolved(recipe: Recipe, model) -> Recipe:
    """``recipe`` with its default float groups made explicit for ``model``: the RPN head of a
    two-stage detector's raw file (its outputs are named rpn_head_*), nothing otherwise."""
    if recipe.keep_float is not None:
        return recipe
    two_stage = any(o.name.startswith('rpn_head') for o in model.graph.output)
    return dataclasses.replace(recipe, keep_float=('head', ) if two_stage else ())


def float_nodes(model, groups: Sequence[str]) -> List[str]:
    """Names of the nodes of ``groups`` (FLOAT_GROUPS): the convs whose weights are the group's
    modules', the nodes between two of them (their activations and pools), and the Relu
    feeding each of their convs: onnxruntime quantizes a float Conv again when it runs the
    file if the Conv's input comes from a DequantizeLinear, so its producer must stay float
    too. Found by weights and edges, not node names, which differ between the exporters."""
    nodes = list(model.graph.node)
    names = set()
    for group in groups:
        prefixes = tuple(f'{EXPORTED_PREFIX}{p}' for p in
                         FLOAT_GROUPS[group] or (last_stage_prefix(model), ) if p)
        found = between_nodes(nodes, {n.name for n in nodes if n.op_type == 'Conv'
                                      and n.input[1].startswith(prefixes)})
        if not found:
            raise InputError(Argument('keep_float', [group]), f': the file has no such nodes '
                             f'(no conv weights named {" or ".join(prefixes)}); the file must '
                             f'hold them (a backbone or neck file has no head)')
        names |= found
    producers = {out: n for n in nodes for out in n.output}
    for node in nodes:
        if node.op_type == 'Conv' and node.name in names:
            feeder = producers.get(node.input[0])
            if feeder is not None and feeder.op_type == 'Relu':
                names.add(feeder.name)
    return sorted(names)


def between_nodes(nodes, convs: Set[str]) -> Set[str]:
    """``convs`` and the nodes other than convs on a path from one of them to another."""
    producers = {out: n for n in nodes for out in n.output}
    consumers: Dict[str, list] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    @functools.lru_cache(maxsize=None)
    def after(name: str) -> bool:  # fed by a group conv through non-conv nodes
        node = by_name[name]
        return any(p.name in convs or (p.op_type != 'Conv' and after(p.name))
                   for p in (producers.get(i) for i in node.input) if p is not None)

    @functools.lru_cache(maxsize=None)
    def before(name: str) -> bool:  # feeding a group conv through non-conv nodes
        return any(c.name in convs or (c.op_type != 'Conv' and before(c.name))
                   for out in by_name[name].output for c in consumers.get(out, ()))

    by_name = {n.name: n for n in nodes}
    return set(convs) | {n.name for n in nodes if n.op_type != 'Conv' and n.name not in convs
                         and after(n.name) and before(n.name)}


def last_stage_prefix(model) -> Optional[str]:
    """'backbone.stages.N.' of the backbone's last stage, from the file's weights."""
    marker = f'{EXPORTED_PREFIX}backbone.stages.'
    stages = {int(i.name[len(marker):].split('.')[0]) for i in model.graph.initializer
              if i.name.startswith(marker)}
    return f'backbone.stages.{max(stages)}.' if stages else None


def quantize_onnx(config: Union[str, Config], onnx_file: str, out: str, split: str = 'train',
                  num_images: int = 64, seed: int = 0, target: str = 'onnxruntime',
                  method: str = 'minmax', keep_float: Optional[Sequence[str]] = None,
                  force: bool = False, cfg_options: Optional[dict] = None,
                  progress: bool = True) -> dict:
    """Write an INT8 (QDQ) version of ``onnx_file`` (a part exported from ``config`` by
    ``export_onnx``) to ``out``, calibrated on ``num_images`` images of the config's ``split``
    dataset (drawn with ``seed``) read through its test pipeline and data preprocessor; for the
    ``target`` runtime ('onnxruntime' or 'tensorrt'), with the ``method`` ('minmax',
    'percentile', 'entropy') and the node groups ``keep_float`` ('stem', 'head', 'last_stage';
    default: a two-stage detector's RPN head, nothing in other files; ``()``: none) in float.
    Returns what was written into the file's metadata ('quantization'), the data
    preprocessor's settings the ranges were measured with included (``OnnxDetector`` refuses a
    config whose preprocessing differs). Bad input (a missing, non-ONNX or already quantized
    file, one from another config, an output that exists without ``force`` or that is
    ``onnx_file`` itself, a split the config lacks) is an error before any work; a failed or
    interrupted run leaves no file. ``progress``: show the calibration's progress.

    Example::

        from mmdet_vanillanet.apis import quantize_onnx

        # raw.onnx: tools/export_onnx.py configs/mask_rcnn_vanillanet_toy.py epoch_40.pth
        #           raw.onnx --part raw
        quantize_onnx('configs/mask_rcnn_vanillanet_toy.py', 'raw.onnx', 'raw_int8.onnx',
                      split='train', num_images=64)
        # then OnnxDetector(config, 'raw_int8.onnx', 'epoch_40.pth') decodes its outputs
    """
    onnx_packages('quantizing')
    recipe = Recipe(target, method, keep_float=keep_float)
    check_output_path(out, force, inputs=(onnx_file, config if isinstance(config, str) else None))
    return quantize_file(load_config(config, cfg_options), onnx_file, out, recipe, split,
                         num_images, seed, replace=force, progress=progress)


def quantize_file(cfg: Config, onnx_file: str, out: str, recipe: Recipe, split: str = 'train',
                  num_images: int = 64, seed: int = 0, replace: bool = True,
                  progress: bool = False) -> dict:
    """``quantize_onnx``'s work, for any ``recipe`` (benchmarks/int8_accuracy.py measures
    variants with it); ``out`` is replaced if it exists only with ``replace``."""
    model = load_exported(onnx_file)
    meta = read_metadata(model)
    check_file_fits_config(onnx_file, meta, cfg)
    recipe = resolved(recipe, model)
    if 'head' in recipe.keep_float and meta['part'] != 'raw':
        raise InputError(Argument('keep_float', ['head']), f': {onnx_file} holds the '
                         f'{meta["part"]} part, without a head')
    excluded = float_nodes(model, recipe.keep_float)
    dataset = split_dataset_cfg(cfg, split)
    inputs = calibration_inputs(cfg, split, num_images, seed, static_input_shape(model),
                                progress=progress)
    record = metadata_record(recipe, excluded, dict(
        images=len(inputs), split=split, seed=seed, ann_file=dataset.get('ann_file'),
        data_root=dataset.get('data_root'),
        read_by='the config\'s test pipeline and data preprocessor'),
        preprocessing=preprocessing_of(cfg))
    write_quantized(model, out, CalibrationReader(inputs, progress=progress), recipe, excluded,
                    record, replace)
    return record


def quantize_on_inputs(onnx_file: str, out: str, inputs: Sequence,
                       recipe: Optional[Recipe] = None, calibration: str = '') -> dict:
    """The INT8 version of ``onnx_file`` calibrated on given ``inputs`` (NCHW float32 arrays):
    tools/benchmark.py's, whose speed does not depend on the images; ``calibration`` says
    what they are in the metadata."""
    model = load_exported(onnx_file)
    recipe = resolved(recipe or Recipe(), model)
    excluded = float_nodes(model, recipe.keep_float)
    record = metadata_record(recipe, excluded, dict(images=len(inputs), read_by=calibration))
    write_quantized(model, out, CalibrationReader(inputs), recipe, excluded, record)
    return record


def metadata_record(recipe: Recipe, excluded: Sequence[str], calibration: dict,
                    preprocessing: Optional[dict] = None) -> dict:
    """What goes into the file's metadata: the recipe, the nodes kept float, the calibration
    data, the data preprocessor's settings it was read with, and onnxruntime's version."""
    _, onnxruntime = onnx_packages('quantizing')
    return dict(format='QDQ', **asdict(recipe), onnxruntime=onnxruntime.__version__,
                float_nodes=list(excluded), calibration=calibration,
                preprocessing=preprocessing)


def write_quantized(model, out: str, reader, recipe: Recipe, excluded: Sequence[str],
                    record: dict, replace: bool = True):
    """quantize_static into a new file beside ``out``, the record into its metadata, a check
    that the excluded convs stayed float, then the rename (over an existing ``out`` only with
    ``replace``): a failure leaves no file."""
    import onnx
    from onnxruntime.quantization import quantize_static
    with new_file_for(out, replace) as partial, quiet_preprocessing_advice():
        # The ModelProto, not a path: from a path quantize_static writes <file>-inferred.onnx
        # beside the input (two runs on one file race; a read-only folder fails).
        try:
            quantize_static(model, partial, reader, nodes_to_exclude=list(excluded) or None,
                            **recipe.quantize_static_kwargs())
        finally:
            reader.done()  # the bar's line ends, also before an error's line
        quantized = onnx.load(partial)
        kept = float_convs(quantized)
        wanted = sorted(n.name for n in model.graph.node
                        if n.op_type == 'Conv' and n.name in set(excluded))
        if kept != wanted:
            raise RuntimeError(f'quantize_static left the convs {kept} in float where '
                               f'{wanted} were asked for')
        entry = quantized.metadata_props.add()
        entry.key, entry.value = QUANTIZATION_KEY, json.dumps(record)
        onnx.save(quantized, partial)


@contextlib.contextmanager
def quiet_preprocessing_advice():
    """Without onnxruntime's advice to run its pre-processing before quantization (printed
    twice a run through the root logger): the file is quantized as exported, on purpose. Its
    pre-processing (shape inference and onnxruntime's basic graph optimisations) would only
    fold the export's Constant, Cast and Identity nodes here (the convs are fused already, the
    node names stay), and every figure of the INT8 tables (docs/deployment.md) was measured
    without it."""
    class Advice(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return 'pre-processing before quantization' not in record.getMessage()

    loggers = [logging.getLogger(), logging.getLogger('onnxruntime.quantization')]
    advice = Advice()
    for logger in loggers:
        logger.addFilter(advice)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(advice)


def load_exported(path: str):
    """The ModelProto of an exported, not yet quantized part; a one-line error otherwise."""
    onnx, _ = onnx_packages('quantizing')
    check_input_file(path, 'ONNX file')
    try:
        model = onnx.load(path)
    except Exception as err:  # onnx raises DecodeError, or others, on a file it cannot parse
        raise InputError(f'{path} is not an ONNX file ({type(err).__name__})') from None
    if is_quantized(model):
        raise InputError(f'{path} is already quantized: quantize the float file that '
                         f'tools/export_onnx.py wrote')
    if read_metadata(model).get('part') not in PARTS:
        raise InputError(f'{path} has no VanillaNet metadata: write it with export_onnx '
                         f'(tools/export_onnx.py)')
    return model
