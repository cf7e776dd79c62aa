"""VanillaNet for MMDetection 3.x: the plugin that configs import (``custom_imports``).

Importing it registers the backbone (``models``) and VanillaNet's own training-time parts
(``engine``: deep training, deploy, checkpoint fit, layer decay) in MMDetection's registries.
It changes nothing else. What makes a run safe whatever its backbone is the ``mmdet_runsafe``
package beside it; what a user calls to deploy is in ``mmdet_vanillanet.deploy`` (through
``mmdet_vanillanet.apis``); the code our command-line tools share is beside them
(tools/vanillanet_toolkit), not in the package.
"""
from . import engine  # noqa: F401  (registers the hooks and the optimizer constructor)
from .models import VanillaNet  # noqa: F401
from .version import __version__  # noqa: F401
