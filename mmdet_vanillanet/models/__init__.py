from .arch_settings import ARCH_SETTINGS, ArchSpec, resolve_arch
from .vanillanet import VanillaBlock, VanillaNet

__all__ = ['ARCH_SETTINGS', 'ArchSpec', 'resolve_arch', 'VanillaBlock', 'VanillaNet']
