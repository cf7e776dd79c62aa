"""The VanillaNet family: widths and strides of every released arch (paper Table 1).

An arch is a stem (a 4x4 patchify conv) followed by one block per stage; stage ``i`` maps
``dims[i]`` channels to ``dims[i + 1]`` and downsamples by ``strides[i]`` with a max pool.
"""
from dataclasses import dataclass, fields
from typing import Optional, Tuple, Union

from ..config_error import ConfigError

STEM = 'stem'  # the name of the stem output in ``out_indices``


@dataclass(frozen=True)
class ArchSpec:
    dims: Tuple[int, ...]
    strides: Tuple[int, ...]
    # Per stage: 0 for an ordinary max pool, k for an adaptive max pool to a fixed k x k grid.
    ada_pool: Optional[Tuple[int, ...]] = None
    stem_stride: int = 4
    stem_padding: int = 0

    def __post_init__(self):
        object.__setattr__(self, 'dims', tuple(int(d) for d in self.dims))
        object.__setattr__(self, 'strides', tuple(int(s) for s in self.strides))
        if self.ada_pool is not None:
            object.__setattr__(self, 'ada_pool', tuple(int(k) for k in self.ada_pool))
        if len(self.strides) < 1 or len(self.dims) != len(self.strides) + 1:
            raise ConfigError(
                f'arch needs one more width than strides (the stem width, then one per stage); '
                f'got {len(self.dims)} dims {self.dims} and {len(self.strides)} strides '
                f'{self.strides}')
        if min(self.dims) < 1 or min(self.strides) < 1:
            raise ConfigError(f'arch widths and strides must be positive, got dims {self.dims} '
                             f'and strides {self.strides}')
        if self.ada_pool is not None and len(self.ada_pool) != len(self.strides):
            raise ConfigError(f'arch ada_pool needs one entry per stage ({len(self.strides)}), '
                             f'got {self.ada_pool}')

    @property
    def num_stages(self) -> int:
        return len(self.strides)

    @property
    def pools(self) -> Tuple[int, ...]:
        """Per stage: 0 for an ordinary max pool, k for an adaptive one to k x k."""
        return self.ada_pool or (0, ) * self.num_stages

    def stage_channels(self, index: Union[int, str]) -> int:
        """Channels of the stem output (``'stem'``) or of stage ``index``'s output."""
        return self.dims[0] if index == STEM else self.dims[index + 1]

    def nominal_strides(self) -> dict:
        """Downsampling factor of the stem and of every stage output, as ordered positions."""
        strides = {STEM: self.stem_stride}
        total = self.stem_stride
        for i, s in enumerate(self.strides):
            total *= s
            strides[i] = total
        return strides

    def default_out_indices(self) -> tuple:
        """The last position at each stride: the maps an FPN wants (strides 4, 8, 16, 32)."""
        last_at = {}
        for position, stride in self.nominal_strides().items():
            last_at[stride] = position
        return tuple(last_at.values())


def _deep(extra_2048: int) -> ArchSpec:
    """Archs 7 to 13 differ only in how many 2048-wide, stride-1 stages they stack."""
    return ArchSpec(dims=(512, 512, 1024) + (2048, ) * extra_2048 + (4096, 4096),
                    strides=(1, 2, 2) + (1, ) * (extra_2048 - 1) + (2, 1))


def _widen(spec: ArchSpec, factor: float, **changes) -> ArchSpec:
    return ArchSpec(**{
        **{f.name: getattr(spec, f.name) for f in fields(spec)},
        'dims': tuple(int(d * factor) for d in spec.dims),
        **changes,
    })


ARCH_SETTINGS = {
    '5': ArchSpec(dims=(512, 1024, 2048, 4096), strides=(2, 2, 2)),
    '6': ArchSpec(dims=(512, 1024, 2048, 4096, 4096), strides=(2, 2, 2, 1)),
    **{str(n): _deep(n - 6) for n in range(7, 14)},
}
ARCH_SETTINGS['13_x1_5'] = _widen(ARCH_SETTINGS['13'], 1.5)
ARCH_SETTINGS['13_x1_5_ada_pool'] = _widen(
    ARCH_SETTINGS['13'], 1.5, ada_pool=(0, 38, 19, 0, 0, 0, 0, 0, 0, 10, 0),
    stem_stride=3, stem_padding=1)


def resolve_arch(arch: Union[str, int, dict, ArchSpec]) -> ArchSpec:
    """An arch name from the table, or a dict of ArchSpec fields for custom widths."""
    if isinstance(arch, ArchSpec):
        return arch
    if isinstance(arch, dict):
        known = {f.name for f in fields(ArchSpec)}
        unknown = sorted(set(arch) - known)
        missing = sorted({'dims', 'strides'} - set(arch))
        if unknown or missing:
            raise ConfigError(f'custom arch dict: unknown keys {unknown}, missing keys {missing}; '
                             f'allowed keys are {sorted(known)} (dims and strides required)')
        return ArchSpec(**arch)
    if str(arch) not in ARCH_SETTINGS:
        raise ConfigError(f"unknown VanillaNet arch '{arch}'; choose one of "
                         f'{list(ARCH_SETTINGS)} or give a dict with dims and strides')
    return ARCH_SETTINGS[str(arch)]
