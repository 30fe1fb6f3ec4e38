"""Test-wide settings: never touch the network, keep CPU threads predictable."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("DMDR_TEST", "1")

import torch  # noqa: E402

torch.set_num_threads(2)
