"""Counts print with useful precision (issue 17): a small model's 18432 parameters read 18.4K,
not 0.02M, and its FLOPs are not 0.0G."""
import pytest

from mmdet_runsafe.units import readable


@pytest.mark.parametrize('count, text', [
    (18432, '18.4K'), (17_900_000, '17.9M'), (432_200_000_000, '432G'), (950, '950'),
    (3.2e7, '32M'), (1.5e12, '1.5T'), (0, '0')])
def test_three_significant_digits_with_a_unit(count, text):
    assert readable(count) == text
