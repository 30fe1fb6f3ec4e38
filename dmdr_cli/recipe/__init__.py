"""Recipe format: schema (typed, documented fields) and loader (YAML + key=value overrides)."""

from .load import all_key_paths, load_recipe, to_yaml, validate
from .schema import Recipe

__all__ = ["Recipe", "load_recipe", "validate", "to_yaml", "all_key_paths"]
