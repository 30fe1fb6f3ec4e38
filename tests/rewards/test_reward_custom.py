"""User rewards named as module:function."""

from __future__ import annotations

import textwrap

import pytest
import torch

from dmdr_cli.errors import DmdrError
from dmdr_cli.recipe.schema import RewardSpec
from dmdr_cli.rewards import build_reward
from dmdr_cli.rewards.custom import CustomReward

USER_MODULE = '''
import torch

def brightness(images, prompts):
    return images.mean(dim=(1, 2, 3))

def per_pixel(images, prompts):
    return images.mean(dim=1)

def as_list(images, prompts):
    return [1.0] * len(prompts)

class Scorer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.gain = torch.nn.Parameter(torch.tensor(2.0))

    def forward(self, images, prompts):
        return self.gain * images.mean(dim=(1, 2, 3))

scorer = Scorer()
not_callable = 3
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch) -> str:
    (tmp_path / "dmdr_test_user_rewards.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "dmdr_test_user_rewards"


def custom_spec(function: str, **kwargs) -> RewardSpec:
    return RewardSpec(name="custom", options={"function": function, **kwargs.pop("options", {})}, **kwargs)


def test_function_scores_and_passes_gradients(user_module, images, prompts):
    reward = build_reward(custom_spec(f"{user_module}:brightness", options={"default_margin": 1.0}))
    scores = reward(images, prompts)
    torch.testing.assert_close(scores.detach(), images.detach().mean(dim=(1, 2, 3)))
    scores.sum().backward()
    assert images.grad.abs().sum() > 0
    assert reward.default_margin == 1.0


def test_module_instances_are_frozen_with_the_reward(user_module, images, prompts):
    reward = build_reward(custom_spec(f"{user_module}:scorer", loss="linear"))
    assert not any(p.requires_grad for p in reward.parameters())
    torch.testing.assert_close(reward(images, prompts).detach(), 2 * images.detach().mean(dim=(1, 2, 3)))


@pytest.mark.parametrize("function,found", [("per_pixel", r"a torch.float32 tensor of shape \[2, 48, 40\]"),
                                            ("as_list", "a list")])
def test_wrong_output_is_a_clear_error(user_module, images, prompts, function, found):
    reward = build_reward(custom_spec(f"{user_module}:{function}", loss="linear"))
    with pytest.raises(DmdrError, match=rf"^custom reward {user_module}:{function} returned {found}; expected a float "
                                        r"tensor of shape \[2\] \(one score per image\)$"):
        reward(images, prompts)


@pytest.mark.parametrize("function,message", [
    ("no_colon", r"rl.rewards\[2\].options.function is 'no_colon': write it as 'package.module:function'"),
    ("dmdr_no_such_module:f", r"cannot import module 'dmdr_no_such_module'"),
    ("{m}:missing", r"module 'dmdr_test_user_rewards' has no attribute 'missing'"),
    ("{m}:not_callable", r"is a int, not a function of \(images, prompts\)"),
])
def test_bad_targets_are_clear_errors(user_module, function, message):
    with pytest.raises(DmdrError, match=message):
        build_reward(custom_spec(function.format(m=user_module), loss="linear"), key="rl.rewards[2]")


def test_hinge_without_any_margin_is_refused(user_module):
    with pytest.raises(DmdrError, match=r"no default hinge margin .* set rl.rewards\[0\].margin"):
        build_reward(custom_spec(f"{user_module}:brightness"), key="rl.rewards[0]")
    assert build_reward(custom_spec(f"{user_module}:brightness", margin=0.5)).default_margin is None


def test_in_memory_function(images, prompts):
    reward = CustomReward(lambda x, p: x.sum(dim=(1, 2, 3)), default_margin=3.0)
    assert reward(images, prompts).shape == (2,)
