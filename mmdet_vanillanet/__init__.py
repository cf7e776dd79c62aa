"""VanillaNet for MMDetection 3.x. Importing the package registers everything it provides."""
from .models import VanillaNet  # noqa: F401  (registers the backbone in mmdet's MODELS)
from .serialization import register_safe_globals

register_safe_globals()

__version__ = '0.1.0'
