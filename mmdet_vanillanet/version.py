"""The package's version, in one place: ``mmdet_vanillanet.__version__`` and setup.cfg read it."""
__version__ = '0.4.0'
