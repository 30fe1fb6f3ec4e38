"""world-clip: the shapes world's learned reward, a small CLIP-like model (reward_model.py) trained with
InfoNCE on rendered scenes and their prompts (`dmdr world reward`, reward_train.py).

Score = cosine of the normalised image and text embeddings, differentiable w.r.t. the [0, 1] images
(images of another size are resized to the reward's resolution with tensor ops). Units: "cosine".
The default hinge margin, stored with the weights, is the 90th percentile of the scores of clean
renders of held-out prompts: most generated images score below it, so relu(margin - r) keeps a
gradient for them.

Like a human-preference model, world-clip is a learned proxy with blind spots, kept on purpose.
Trained with in-batch negatives only, it learns what tells random prompts apart (shapes, colours,
roughly how many things) and little of what random prompts rarely contrast, just as real CLIP does:
which colour belongs to which object, which object is left of which. `dmdr world reward` measures
this on held-out clean renders: for each probe, the accuracy of picking the true prompt over its
minimally edited distractors (chance in brackets), written to probe.json next to the weights.
Measured on the shipped weights (300 prompts per probe, 24 px):

    probe                                        distractors                      accuracy (chance)
    single object: which shape                   the other 2 shapes                 see probe.json
    colour: which colour                         the other 5 colours
    counting: how many                           the other counts (1-4)
    two objects: which pair                      one shape replaced
    position: which relation                     the opposite relation
    colour attribution: which colour on which    colours swapped between objects

(The table is filled in from probe.json when the shipped weights are trained; see the module's
`PROBE_RESULTS`.)

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
