"""What installing the package asks of a user's environment: ranges, never the exact stack.

A user's OpenMMLab environment has its own torch (often a CUDA build) and an mmcv compiled for
it; a requirement pinned to one version would make pip replace both. The pins of the tested
stack belong to `make install` (requirements/constraints.txt), and must lie inside the ranges.
"""
import importlib.metadata
import os.path as osp

from packaging.requirements import Requirement

from helpers import REPO_ROOT

STACK = ('torch', 'mmcv', 'mmengine', 'mmdet')


def declared_requirements():
    """What pip reads from the installed package's metadata (extras left out)."""
    reqs = [Requirement(r) for r in importlib.metadata.requires('mmdet-vanillanet')]
    return {r.name: r for r in reqs if r.marker is None}


def constraint_pins():
    pins = {}
    with open(osp.join(REPO_ROOT, 'requirements', 'constraints.txt')) as f:
        for line in f:
            line = line.split('#')[0].strip()
            if line:
                req = Requirement(line)
                pins[req.name] = req
    return pins


def test_the_package_declares_ranges_for_the_stack_and_pins_none():
    declared = declared_requirements()
    assert set(STACK) <= set(declared), f'undeclared: {set(STACK) - set(declared)}'
    for name in STACK:
        specs = list(declared[name].specifier)
        assert specs, f'{name} has no lower bound'
        exact = [s for s in specs if s.operator in ('==', '===')]
        assert not exact, f'{name} is pinned exactly ({declared[name]}): declare a range'
        assert any(s.operator in ('>=', '>', '~=') for s in specs), \
            f'{name} has no lower bound: {declared[name]}'


def test_the_tested_stack_lies_inside_the_declared_ranges():
    declared, pins = declared_requirements(), constraint_pins()
    for name in STACK:
        pinned = [s.version for s in pins[name].specifier if s.operator == '==']
        assert len(pinned) == 1, f'constraints.txt must pin {name} exactly'
        assert declared[name].specifier.contains(pinned[0], prereleases=True), \
            f'the tested {name}=={pinned[0]} is outside the declared {declared[name]}'



def test_the_version_is_written_once_and_quoted_as_it():
    """version.py is the source; the metadata reads it, CITATION.cff and the changelog quote it."""
    from mmdet_vanillanet import __version__
    installed = importlib.metadata.version('mmdet-vanillanet')
    assert installed == __version__, \
        f'the installed metadata says {installed}, version.py {__version__}: run make install'
    with open(osp.join(REPO_ROOT, 'CITATION.cff')) as f:
        assert f'version: {__version__}\n' in f.read()
    with open(osp.join(REPO_ROOT, 'CHANGELOG.md')) as f:
        assert f'## {__version__}' in f.read()
