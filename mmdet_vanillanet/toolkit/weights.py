"""Generated weights for our tools, benchmarks and tests: ``randomize``, which lives in
``mmdet_vanillanet.comparison`` (the deploy functions use it too). This name stays while
benchmarks/gpu_backbones.py imports it from here."""
from ..deploy.equivalence import randomize  # noqa: F401
