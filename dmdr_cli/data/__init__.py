"""Prompt sets (the only training data: DMDR is image-free)."""
