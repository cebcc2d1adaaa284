"""The binding layer: blocking wrappers over llama-cpp-python's low-level API.

Nothing here knows about event loops; only the decode worker thread calls it.
"""

from .backend import ensure_backend
from .context import Context
from .detokenizer import Detokenizer
from .model import Model, default_model_path
from .sampling import Sampler, make_sampler

__all__ = ["Context", "Detokenizer", "Model", "Sampler", "default_model_path", "ensure_backend", "make_sampler"]
