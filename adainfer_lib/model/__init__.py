"""A model and its logit lens: the architecture registry, loading (offline aliases, local folders, hub
names), where prompts enter a forward pass (``inputs``: checks, batches, the prompt-prefix KV cache), the one
hook mechanism on the decoder layers (``hooks``), and the per-layer trace of the lens (``lens``)."""

from .inputs import label_token_ids, prefix_kv, prepare_prompts
from .layer_trace import CorruptCacheError, LayerTrace
from .lens import lens_stats, trace
from .loading import DEFAULT_MODEL, OFFLINE_MODELS, LensModel, ModelNotFoundError, load_model
from .registry import RegistryPathError, UnsupportedArchitectureError, supported_model_types

__all__ = ["DEFAULT_MODEL", "OFFLINE_MODELS", "LensModel", "ModelNotFoundError", "load_model",
           "RegistryPathError", "UnsupportedArchitectureError", "supported_model_types",
           "prepare_prompts", "label_token_ids", "prefix_kv", "LayerTrace", "CorruptCacheError", "lens_stats", "trace"]
