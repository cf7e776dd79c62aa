"""Counts (parameters, FLOPs) as the tools print them: three significant digits with a K, M,
G or T unit, so that a small model reads 18.4K parameters rather than 0.02M."""

UNITS = ((1e12, 'T'), (1e9, 'G'), (1e6, 'M'), (1e3, 'K'))


def readable(count: float) -> str:
    """``count`` with 3 significant digits and its unit, e.g. 18432 -> '18.4K'."""
    for scale, unit in UNITS:
        if abs(count) >= scale:
            return f'{count / scale:.3g}{unit}'
    return f'{count:.3g}'
