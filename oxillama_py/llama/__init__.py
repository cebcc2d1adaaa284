"""The binding layer: blocking wrappers over llama-cpp-python's low-level API.

Nothing here knows about event loops. The decode worker thread owns each model
and context; a model's vocabulary calls are also safe from other threads
(per-call buffers, a guarded lifetime), and with an OpenMP build every
computing call runs on one process-wide thread (``compute.py``).
"""

from .backend import ensure_backend
from .context import Context
from .detokenizer import Detokenizer
from .model import Model, default_model_path, resolve_model_path
from .sampling import Sampler

__all__ = ["Context", "Detokenizer", "Model", "Sampler", "default_model_path", "ensure_backend", "resolve_model_path"]
