"""world-clip: the shapes world's learned reward, a small CLIP-like model (reward_model.py) trained with
InfoNCE on rendered scenes and their prompts (`dmdr world reward`, reward_train.py).

Score = cosine of the normalised image and text embeddings, differentiable w.r.t. the [0, 1] images
(images of another size are resized to the reward's resolution with tensor ops). Units: "cosine".
The default hinge margin, stored with the weights, is the 90th percentile of the scores of clean
renders of held-out prompts: most generated images score below it, so relu(margin - r) keeps a
gradient for them.

Like a human-preference model, world-clip is a learned proxy with blind spots, kept on purpose.
Trained with in-batch negatives only, it learns what tells random prompts apart (shapes, colours, how
many things) and little of what random prompts rarely contrast, just as real CLIP does: which colour
belongs to which object, which object is left of which. `dmdr world reward` measures this on
held-out clean renders (reward_probe.py): the accuracy of picking the true prompt over minimally
edited distractors. The shipped weights (24 px, 800 steps at batch 96, 300 prompts per probe):

    probe            what the distractors change                 accuracy   chance
    colors           the colour (5 others)                         1.00      0.17
    counting         the count (3 others)                          0.95      0.25
    single_object    the shape (2 others)                          0.93      0.33
    two_object       one of the shapes (2 edits)                   0.84      0.33
    position         the relation, to its opposite                 0.61      0.50
    color_attr       the two colours swapped between objects       0.57      0.50

So it is nearly blind to relations and to attribute binding: rewarding it will not teach a student
where things go or which colour goes on which shape, and a student can raise it without getting
them right. Typical scores: clean renders with their own prompt 0.84 (10th-90th percentile 0.75 to
0.92; the same after the training-time blur and noise), with another prompt 0.47, uniform noise -0.21.
The default margin is 0.92.

Registered with `dmdr_cli.rewards` as "world-clip" when this module is imported.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import DmdrError
from ..rewards.base import Reward
from ..rewards.registry import register_reward, reward_options
from .reward_model import CONFIG_FILE, WorldClip

DEFAULT_WEIGHTS = Path(__file__).parent / "weights" / "reward"


class WorldClipReward(Reward):
    name = "world-clip"
    units = "cosine"
    image_mean = (0.5, 0.5, 0.5)  # the towers see [-1, 1] pixels, like the teacher
    image_std = (0.5, 0.5, 0.5)
    interpolation = "bilinear"

    def __init__(self, model: WorldClip, source: str = "in-memory model"):
        super().__init__()
        self.model = model
        self.source = source
        self.input_size = model.config.resolution
        self.default_margin = model.config.default_margin
        self.freeze()

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, *, key: str = "rl.rewards[i]") -> "WorldClipReward":
        folder = Path(path).expanduser() if path else DEFAULT_WEIGHTS
        if not (folder / CONFIG_FILE).is_file():
            raise DmdrError(f"{key}.path: no world-clip weights in {folder} (no {CONFIG_FILE}): train them with "
                            f"`dmdr world reward recipes/world/reward.yaml`, or point {key}.path at their folder")
        return cls(WorldClip.load(folder), source=str(folder))

    def _score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        pixels = self.preprocess(images)
        return self.model.paired_cosine(pixels, prompts)

    def describe(self) -> str:
        return f"reward 'world-clip' ({self.source})"


def _world_clip_factory(spec, key: str) -> Reward:
    reward_options(spec, key, {})  # world-clip has no options: reject any, naming the key
    return WorldClipReward.from_pretrained(spec.path, key=key)


register_reward("world-clip", _world_clip_factory)
