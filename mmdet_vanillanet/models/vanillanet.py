"""VanillaNet as an MMDetection backbone.

    image -> stem: 4x4 conv/4 + BN, leaky_relu(act_learn), 1x1 conv + BN, series activation
          -> stage i (one block each): 1x1 conv + BN, leaky_relu(act_learn), 1x1 conv + BN,
                                       max pool (stride), series activation
No shortcuts, no attention, no depth beyond a dozen layers. ``act_learn`` is the deep-training
slope: 0 makes the leaky_relu a ReLU (two non-linear layers per block), 1 makes it the identity
(not computed), after which ``switch_to_deploy`` merges every block into a single 1x1 conv and
an activation that applies the block's max pool.

The modules run the lean training ops of ``ops.lean_training`` (``lean_training=True``): a
training step keeps each 1x1 conv's output for backward and recomputes the rest, exactly.
Each conv and BN pair (``ConvBN``) computes leaky_relu(bn(conv(x)), slope) with the slope its
caller gives, none without one.

Each slope is owned by the place it acts in: the stem's by the backbone (``stem_act_learn``, the
authors' model-level ``act_learn``), each block's by the block. Setting the backbone's
``act_learn`` sets all of them (the deep-training hook does), and the authors' ``change_act``
loop sets each block's. A backbone saved with any slope below 1 carries them in its state dict
under ``act_learn`` (``backbone.act_learn`` in a detector): one number where they agree, one per
place where they differ; loading that state dict sets them: whatever loads the weights
(MMEngine's load_checkpoint, MMDetection's tools and DetInferencer, mmdeploy) computes what was
trained, and fusing then refuses. With every slope at 1 the key is absent, so the state dict has
exactly the released key layout, and a state dict without it (the released checkpoints) loads
at 1.
"""
import copy
from typing import Sequence, Tuple, Union

import torch
import torch.nn as nn
from mmcv.cnn import build_norm_layer
from mmdet.registry import MODELS
from mmengine.logging import print_log
from mmengine.model import BaseModule
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

from ..config_error import ConfigError
from ..ops.gradient_checkpoint import checkpoint_stage
from ..ops.lean_training import conv_norm_act, hooked, plain_if
from .arch_settings import STEM, ArchSpec, resolve_arch
from .checkpoint.backbone_weights import load_pretrained
from .checkpoint.forms import ACT_LEARN
from .fusion import merge_conv_bn_modules
from .series_activation import Implementation, SeriesActivation, check_bool


def check_norm_cfg(norm_cfg: dict, channels: int) -> dict:
    """The backbone normalises NCHW maps after each conv: a norm layer that takes them (BN,
    SyncBN, GN, IN), not one over the last dimension (LN), which would fail at the first
    iteration."""
    try:
        layer = build_norm_layer(copy.deepcopy(norm_cfg), channels)[1]
    except (KeyError, TypeError, ValueError, AssertionError) as err:
        raise ConfigError(f'norm_cfg={norm_cfg!r} does not build a norm layer of {channels} '
                         f'channels ({err})') from None
    if not isinstance(layer, (_BatchNorm, nn.GroupNorm, _InstanceNorm)):
        raise ConfigError(f'norm_cfg type {norm_cfg.get("type")!r}: VanillaNet normalises NCHW '
                         f'maps per channel after each conv; use BN (SyncBN for multi-GPU), GN '
                         f'or IN (only BN and SyncBN fuse for deployment)')
    return norm_cfg


def _is_int(value) -> bool:
    """An int that is not a bool (True would pass for 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _save_act_learn(module, state_dict, prefix, local_metadata):
    """State-dict post-hook: the key only where a slope is not 1 (so that a finished network
    has the released key layout): one number where the stem and every block agree, as deep
    training sets them, else one per place in network order (``VanillaNet.slopes``); float64,
    so that the values reload exactly."""
    slopes = module.slopes
    if any(slope != 1.0 for slope in slopes):
        value = slopes[0] if len(set(slopes)) == 1 else slopes
        state_dict[prefix + ACT_LEARN] = torch.tensor(value, dtype=torch.float64)


def _load_act_learn(module, state_dict, prefix, local_metadata, strict, missing_keys,
                    unexpected_keys, error_msgs):
    """Load-state-dict pre-hook: consume the key (so that no loader reports it as unexpected)
    and set every slope; weights without it were saved at 1. A load that holds none of this
    backbone's keys (a partial state dict) leaves the slopes as they are."""
    value = state_dict.pop(prefix + ACT_LEARN, None)
    if value is None and not any(key.startswith(prefix) for key in state_dict):
        return
    places = len(module.slopes)
    try:
        if value is None or value.dim() == 0:
            module.act_learn = 1.0 if value is None else value.item()
        elif tuple(value.shape) == (places, ):
            module.slopes = value.tolist()
        else:
            raise ConfigError(f'holds {tuple(value.shape)} values, where one, or one per place '
                             f'({places}: the stem and each stage), is expected')
    except (ConfigError, AttributeError, TypeError, ValueError, RuntimeError) as error:
        raise ConfigError(f'loading {prefix}{ACT_LEARN}: {error}') from None


def _valid_act_learn(value, deploy: bool) -> float:
    """``value`` as a deep-training slope: a number in [0, 1], and 1 in a deployed network."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f'act_learn={value!r}: must be a number in [0, 1]')
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f'act_learn must lie in [0, 1], got {value}')
    if deploy and value != 1.0:
        raise ConfigError(f'act_learn={value}: a deployed VanillaNet has merged its 1x1 convs, '
                         'which is exact only for act_learn=1; it cannot take another value')
    return value


class ConvBN(nn.Sequential):
    """A conv and its norm layer (keys ``.0.*``, ``.1.*``, as released), then the activation
    module where one is given (``.2.*``). It holds no state of its own: the caller gives the
    slope of the leaky_relu after the norm (None: none) and whether to run the lean ops."""

    def __init__(self, in_channels: int, out_channels: int, norm_cfg: dict,
                 *activation: nn.Module, kernel_size: int = 1, **conv_args):
        super().__init__(nn.Conv2d(in_channels, out_channels, kernel_size, **conv_args),
                         build_norm_layer(norm_cfg, out_channels)[1], *activation)

    def forward(self, x: torch.Tensor, slope: float = None, lean: bool = True) -> torch.Tensor:
        with plain_if(hooked(self)):  # called alone with a hook: as in VanillaNet.forward
            x = conv_norm_act(x, self[0], self[1], slope, lean)  # leaky_relu(BN(conv(x)), slope)
            return x if len(self) == 2 else self[2](x)


class VanillaBlock(nn.Module):
    """One block (a stage holds one), the paper's figure:

        1x1 conv, BN -> leaky_relu(act_learn) -> 1x1 conv, BN -> max pool -> series activation

    The series activation is given the max pool (of the block's stride, or the ada_pool archs'
    adaptive one) when it is made and applies it first, so that the fused block is the same
    modules: one 1x1 conv, then the activation, which pools as it reads the map. Keys:
    ``conv1``, ``conv2``, ``act`` (training); ``conv``, ``act`` (deploy).

    ``act_learn`` is this block's deep-training slope, owned here: the authors' ``change_act``
    sets it block by block, the backbone's ``act_learn`` on every block, and the backbone's
    state dict records each block's (see ``VanillaNet``).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, ada_pool: int = 0,
                 act_num: int = 3, norm_cfg: dict = dict(type='BN', eps=1e-6),
                 deploy: bool = False, act_learn: float = 1.0,
                 implementation: Implementation = None):
        super().__init__()
        self.deploy = deploy
        self.act_learn = act_learn
        self.implementation = implementation or Implementation()
        if deploy:
            self.conv = nn.Conv2d(in_channels, out_channels, 1)
        else:
            self.conv1 = ConvBN(in_channels, in_channels, norm_cfg)
            self.conv2 = ConvBN(in_channels, out_channels, norm_cfg)
        downsample = stride > 1
        self.act = SeriesActivation(
            out_channels, act_num, norm_cfg, deploy, pool=stride if downsample and not ada_pool
            else 1, grid=ada_pool if downsample else 0, implementation=self.implementation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.deploy:
            return self.act(self.conv(x))  # the merged 1x1 convs; max pool, relu, dwconv
        lean = self.implementation.lean
        with plain_if(hooked(self)):  # called alone with a hook: as in VanillaNet.forward
            x = self.conv1(x, slope=self.act_learn, lean=lean)  # 1x1 conv, BN, leaky_relu
            x = self.conv2(x, lean=lean)  # 1x1 conv, BN
            return self.act(x)  # max pool, relu, depthwise conv, BN

    @property
    def act_learn(self) -> float:
        """The slope of the leaky_relu between the 1x1 convs (1 once deployed)."""
        return self._act_learn

    @act_learn.setter
    def act_learn(self, value: float):
        self._act_learn = _valid_act_learn(value, self.deploy)

    def switch_to_deploy(self):
        if self.deploy:
            return
        if self.act_learn != 1.0:
            raise ConfigError(f'cannot fuse a VanillaBlock with act_learn={self.act_learn}: its '
                             f'1x1 convs merge into one only when act_learn=1')
        self.conv = merge_conv_bn_modules(self.conv1, self.conv2)
        del self.conv1, self.conv2
        self.act.switch_to_deploy()
        self.deploy = True


@MODELS.register_module()
class VanillaNet(BaseModule):
    """VanillaNet backbone ("VanillaNet: the Power of Minimalism in Deep Learning", NeurIPS 2023).

    Args:
        arch (str | dict): a name from ``ARCH_SETTINGS`` ('5' ... '13', '13_x1_5',
            '13_x1_5_ada_pool') or a dict with ``dims`` and ``strides`` (optionally
            ``ada_pool``, ``stem_stride``, ``stem_padding``) for custom widths. Default: '13'.
        act_num (int): half-width of the series activation's kernel, which is
            (2 * act_num + 1)^2. Default: 3 (the detection checkpoint uses 4).
        out_indices (Sequence[int | str], optional): stage indices whose outputs are returned,
            and ``'stem'`` for the stem's. Default: the last map at each stride (4, 8, 16, 32),
            e.g. (0, 1, 8, 10) for arch 13 and ('stem', 0, 1, 2) for arch 5, which has no stage
            at stride 4.
        frozen_stages (int): -1 freezes nothing; k >= 0 freezes the stem and the first k stages
            (no gradient, BN in eval mode). Default: -1.
        norm_eval (bool): keep every BN layer in eval mode during training. Default: False.
        norm_cfg (dict): normalisation after each conv (BN with eps 1e-6 as released; SyncBN
            for multi-GPU training). Only BatchNorm can be fused for deployment.
        act_learn (float): the deep-training slope of the leaky_relu in the stem and every
            block, in [0, 1] (1: the identity, as released; a deployed network takes only 1).
            The value the network is built with: loading weights sets the value they were saved
            at (released checkpoints: 1), and ``VanillaNetDeepTrainingHook`` sets it during
            training. Default: 1.
        lean_training (bool): train with the lean ops (``ops.lean_training``): a training step
            keeps each 1x1 conv's output for backward and recomputes the rest (BN, leaky_relu,
            pool, relu, the depthwise conv), with the plain path's outputs, gradients and BN
            statistics. Runs only where that is proven (BN or SyncBN, no module hook, a
            non-empty batch; docs/limits.md), the plain path elsewhere. Default: True.
        with_cp (bool): keep only each stage's input and recompute the stage in the backward
            pass (gradient checkpointing; BN statistics are still updated once per step).
            Composes with ``lean_training``. Default: False.
        deploy (bool): build the fused network directly (to load a deploy checkpoint).
            Default: False.
        act_impl (str): how the fused network computes its activations: 'auto' (a Triton
            kernel for CUDA tensors in inference, PyTorch elsewhere), 'triton' (the kernel, an
            error where it cannot run) or 'torch'. Also settable after construction
            (``model.act_impl``, as ``model.lean_training``). Default: 'auto'.
        init_cfg (dict, optional): ``dict(type='Pretrained', checkpoint=...)`` loads a released
            ImageNet file or a detector checkpoint, checked key by key (see
            ``mmdet_vanillanet.models.checkpoint.backbone_weights``).

    Example:
        >>> import torch
        >>> from mmdet_vanillanet.models import VanillaNet
        >>> model = VanillaNet(arch='5').eval()
        >>> [tuple(out.shape) for out in model(torch.rand(1, 3, 64, 64))]
        [(1, 512, 16, 16), (1, 1024, 8, 8), (1, 2048, 4, 4), (1, 4096, 2, 2)]
        >>> model.switch_to_deploy()  # every BN folded, each block's 1x1 convs merged
        >>> model.out_channels
        (512, 1024, 2048, 4096)
    """
    # The smallest input side every stage still maps, set by each network; declared here, so
    # that a data check asks a backbone's class whether it has one (mmdet_runsafe.datasets).
    min_input_size: int = 1

    def __init__(self,
                 arch: Union[str, dict] = '13',
                 act_num: int = 3,
                 out_indices: Sequence[Union[int, str]] = None,
                 frozen_stages: int = -1,
                 norm_eval: bool = False,
                 norm_cfg: dict = dict(type='BN', eps=1e-6, requires_grad=True),
                 act_learn: float = 1.0,
                 lean_training: bool = True,
                 with_cp: bool = False,
                 deploy: bool = False,
                 act_impl: str = 'auto',
                 init_cfg=dict(type='TruncNormal', layer='Conv2d', std=.02, bias=0.)):
        super().__init__(init_cfg=init_cfg)
        # How the modules compute (not what): one object, which every block and activation reads.
        self.implementation = Implementation(lean_training, act_impl)
        self.deploy = check_bool('deploy', deploy)
        act_learn = _valid_act_learn(act_learn, deploy)
        self.arch_name = 'custom' if isinstance(arch, (dict, ArchSpec)) else str(arch)
        self.arch = resolve_arch(arch)
        if not _is_int(act_num) or act_num < 0:
            raise ConfigError(f'act_num must be an integer >= 0 (kernel 2*act_num+1), '
                             f'got {act_num!r}')
        num_stages = self.arch.num_stages
        if out_indices is None:
            out_indices = self.arch.default_out_indices()
        if not isinstance(out_indices, (list, tuple)):
            raise ConfigError(f'out_indices must be a list or tuple of stage indices, e.g. '
                             f'out_indices=({out_indices!r}, ), got {out_indices!r}')
        out_indices = tuple(out_indices)
        valid = [STEM, *range(num_stages)]
        bad = [i for i in out_indices if not (_is_int(i) or i == STEM) or i not in valid]
        if bad or not out_indices:
            raise ConfigError(f'out_indices {out_indices}: {bad or "empty"} not allowed; this arch '
                             f'has stages 0..{num_stages - 1}, and {STEM!r} names the stem')
        if [valid.index(i) for i in out_indices] != sorted({valid.index(i) for i in out_indices}):
            raise ConfigError(f'out_indices {out_indices} must be in network order without '
                             f'repeats ({STEM!r} first), as the maps are returned in that order')
        if not _is_int(frozen_stages) or not -1 <= frozen_stages <= num_stages:
            raise ConfigError(f'frozen_stages={frozen_stages!r} is not allowed: -1 freezes '
                             f'nothing, 0 the stem, k the stem and the first k stages, up to '
                             f'{num_stages} for this arch')
        self.act_num = act_num
        self.out_indices = out_indices
        self.out_channels = tuple(self.arch.stage_channels(i) for i in out_indices)
        self.out_strides = tuple(self.arch.nominal_strides()[i] for i in out_indices)
        self.frozen_stages = frozen_stages
        self.norm_eval = check_bool('norm_eval', norm_eval)
        self.norm_cfg = copy.deepcopy(check_norm_cfg(norm_cfg, self.arch.dims[0]))
        if check_bool('with_cp', with_cp) and deploy:
            print_log('VanillaNet: with_cp is ignored by a deploy (fused) backbone, which is '
                      'not trained', logger='current', level=30)
            with_cp = False
        self.with_cp = with_cp
        self.min_input_size = self._smallest_valid_size()

        arch = self.arch
        d0 = arch.dims[0]
        if deploy:
            self.stem = nn.Sequential(
                nn.Conv2d(3, d0, 4, stride=arch.stem_stride, padding=arch.stem_padding),
                SeriesActivation(d0, act_num, deploy=True, implementation=self.implementation))
        else:
            self.stem1 = ConvBN(3, d0, norm_cfg, kernel_size=4, stride=arch.stem_stride,
                                padding=arch.stem_padding)
            self.stem2 = ConvBN(d0, d0, norm_cfg, SeriesActivation(
                d0, act_num, norm_cfg, implementation=self.implementation))
        self.stem_act_learn = act_learn
        self.stages = nn.ModuleList(
            VanillaBlock(arch.dims[i], arch.dims[i + 1], arch.strides[i], arch.pools[i], act_num,
                         norm_cfg, deploy, act_learn, self.implementation)
            for i in range(num_stages))
        self._freeze_stages()
        self.register_state_dict_post_hook(_save_act_learn)
        self.register_load_state_dict_pre_hook(_load_act_learn)

    # --- the network -------------------------------------------------------------------------

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        if self.deploy:
            return self.stem(x)  # the merged convs, series activation
        lean = self.implementation.lean
        x = self.stem1(x, slope=self.stem_act_learn, lean=lean)  # 4x4 conv, BN, leaky_relu
        return self.stem2(x, lean=lean)  # 1x1 conv, BN, series activation

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        self._check_input(x)
        # A hook on any module of the backbone would not see, or would change unseen, what the
        # lean ops compute: such a pass runs the plain path.
        with plain_if(hooked(self)):
            outs = []
            x = self.forward_stem(x)
            if STEM in self.out_indices:
                outs.append(x)
            for i, stage in enumerate(self.stages):
                x = checkpoint_stage(stage, x) if self.with_cp and self.training else stage(x)
                if i in self.out_indices:
                    outs.append(x)
        return tuple(outs)

    # --- deep training and deployment ----------------------------------------------------------

    @property
    def act_learn(self) -> float:
        """The deep-training slope of the leaky_relu in the stem and every block. Set here, it
        sets each of them (the authors' change_act); read here, it is the lowest of them, 1
        only when every one is 1 and the network can be fused."""
        return min(self.slopes)

    @act_learn.setter
    def act_learn(self, value: float):
        self.slopes = [value] * (1 + len(self.stages))

    @property
    def stem_act_learn(self) -> float:
        """The stem's slope (the authors' model-level ``act_learn``), owned here."""
        return self._stem_act_learn

    @stem_act_learn.setter
    def stem_act_learn(self, value: float):
        self._stem_act_learn = _valid_act_learn(value, self.deploy)

    @property
    def slopes(self) -> Tuple[float, ...]:
        """Each place's slope, in network order: the stem's, then each block's."""
        return (self.stem_act_learn, *(block.act_learn for block in self.stages))

    @slopes.setter
    def slopes(self, values: Sequence[float]):
        values = [_valid_act_learn(v, self.deploy) for v in values]  # all or none
        if len(values) != 1 + len(self.stages):
            raise ConfigError(f'{len(values)} slopes for {1 + len(self.stages)} places (the '
                              'stem and each stage)')
        self.stem_act_learn = values[0]
        for block, value in zip(self.stages, values[1:]):
            block.act_learn = value

    @property
    def act_impl(self) -> str:
        """'auto', 'triton' or 'torch': how every series activation computes once fused."""
        return self.implementation.act_impl

    @act_impl.setter
    def act_impl(self, value: str):
        self.implementation.act_impl = value

    @property
    def lean_training(self) -> bool:
        """Whether training runs the lean ops (``ops.lean_training``)."""
        return self.implementation.lean

    @lean_training.setter
    def lean_training(self, value: bool):
        self.implementation.lean = value

    def switch_to_deploy(self):
        """Fuse, in place, into the deployed network; a second call does nothing."""
        if self.deploy:
            return
        places = ['the stem', *(f'stages.{i}' for i in range(len(self.stages)))]
        below = [(place, value) for place, value in zip(places, self.slopes) if value != 1.0]
        if below:
            place, value = below[0]
            where = '' if len(set(self.slopes)) == 1 else f' in {place}'
            raise ConfigError(
                f'cannot fuse VanillaNet with act_learn={value}{where}: its 1x1 conv pairs '
                'merge into one conv only when act_learn=1 (leaky_relu is then the identity), so '
                'fusing now would change what the network computes. Finish the deep-training '
                'schedule (act_learn reaches 1) before fusing.')
        self.stem = nn.Sequential(merge_conv_bn_modules(self.stem1, self.stem2), self.stem2[2])
        self.stem[1].switch_to_deploy()
        del self.stem1, self.stem2
        for stage in self.stages:
            stage.switch_to_deploy()
        self.deploy = True

    # --- training behaviour --------------------------------------------------------------------

    def _frozen_modules(self):
        if self.frozen_stages < 0:
            return []
        stem = [self.stem] if self.deploy else [self.stem1, self.stem2]
        return stem + list(self.stages[:self.frozen_stages])

    def _freeze_stages(self):
        for module in self._frozen_modules():
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    def _check_input(self, x: torch.Tensor):
        if self.deploy and self.training and torch.is_grad_enabled():
            raise RuntimeError(
                'this VanillaNet is fused for deployment (no BN, merged convs) and is not meant '
                'to be trained: call .eval() for inference, or train the training-mode network '
                '(deploy=False) from a training-mode checkpoint')
        h, w = x.shape[-2:]
        if min(h, w) < self.min_input_size:
            raise ConfigError(
                f'input {h}x{w} is too small for VanillaNet-{self.arch_name}: every side '
                f'must be at least {self.min_input_size} pixels')

    def _smallest_valid_size(self) -> int:
        """Smallest side for which every stage still has a map (ada_pool: no upsampling)."""
        arch = self.arch

        def valid(size):
            size = (size + 2 * arch.stem_padding - 4) // arch.stem_stride + 1
            for stride, grid in zip(arch.strides, arch.pools):
                if size < 1 or (stride > 1 and grid and size < grid):
                    return False
                if stride > 1:
                    size = grid or size // stride
            return size >= 1

        size = 1
        while not valid(size):
            size += 1
        return size

    def init_weights(self):
        if self.init_cfg is not None and self.init_cfg.get('type') == 'Pretrained':
            load_pretrained(self, self.init_cfg['checkpoint'], self.init_cfg.get('prefix'))
            self._is_init = True
        else:
            super().init_weights()
