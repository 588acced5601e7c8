"""The model layer: load any HF VLM or causal LM, family adapters, and tiny models for tests and demos."""

from unmirage.models.families import FAMILIES, FamilyAdapter, family_for, get_family, unwrap
from unmirage.models.load import LoadedModel, load_model, resolve_device
from unmirage.models.tiny import TinySpec, build_tiny, save_tiny, tiny_families

__all__ = [
    "FAMILIES",
    "FamilyAdapter",
    "LoadedModel",
    "TinySpec",
    "build_tiny",
    "family_for",
    "get_family",
    "load_model",
    "resolve_device",
    "save_tiny",
    "tiny_families",
    "unwrap",
]
