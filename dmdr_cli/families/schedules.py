"""Noise processes in x0-space, the only view the DMD and RL math ever takes (k-diffusion style).

Time `t` is a float tensor in [0, 1] (1 = pure noise) with one entry per sample. Each schedule turns
it into what its network is told (`model_timestep`) and converts between the network's own output
(eps, v or flow velocity) and the clean-sample estimate x0.

Formulas: ALGORITHM.md, "Notation" (eps/v: Ho et al. 2020, Salimans & Ho 2022; flow: Esser et al. 2024).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

PREDICTIONS = ("epsilon", "v_prediction", "flow")


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-sample values [B] broadcast over the remaining dims of `like`."""
    return v.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)


class NoiseSchedule(ABC):
    """x0-space interface shared by every family; subclasses fill in the parameterisation."""

    prediction: str

    @abstractmethod
    def model_timestep(self, t: torch.Tensor) -> torch.Tensor:
        ...

    @abstractmethod
    def signal_noise(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, s) with x_t = a x0 + s n."""

    def renoise(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        a, s = self.signal_noise(t)
        return _bcast(a, x0) * x0 + _bcast(s, x0) * noise

    def noise_from(self, x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The noise that makes `renoise(x0, t, noise) == x_t` (used by deterministic steps)."""
        a, s = self.signal_noise(t)
        return (x_t - _bcast(a, x_t) * x0) / _bcast(s, x_t).clamp_min(1e-8)

    def to_x0(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Network output in its own parameterisation -> x0."""
        a, s = self.signal_noise(t)
        a, s = _bcast(a, x_t), _bcast(s, x_t)
        if self.prediction == "epsilon":
            return (x_t - s * out) / a
        if self.prediction == "v_prediction":
            return a * x_t - s * out
        return x_t - s * out  # flow: a = 1 - t, s = t, v = n - x0

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the network should output at renoise(x0, t, noise): the fake-score regression target."""
        if self.prediction == "epsilon":
            return noise
        a, s = self.signal_noise(t)
        if self.prediction == "v_prediction":
            return _bcast(a, x0) * noise - _bcast(s, x0) * x0
        return noise - x0

    def ddim_step(self, x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor) -> torch.Tensor:
        """Deterministic step to t_next keeping the implied noise (DDIM eta=0; Euler for flow)."""
        return self.renoise(x0, t_next, self.noise_from(x_t, x0, t))


@dataclass
class DiscreteSchedule(NoiseSchedule):
    """DDPM-style schedule of the eps / v-prediction UNets (SD1.x/2.x, SDXL).

    `alphas_cumprod` comes from the model's own scheduler config, so fine-tunes with other betas work.
    """

    alphas_cumprod: torch.Tensor
    prediction: str = "epsilon"

    def __post_init__(self):
        if self.prediction not in ("epsilon", "v_prediction"):
            raise ValueError(f"DiscreteSchedule supports epsilon and v_prediction, not {self.prediction!r}")
        self.alphas_cumprod = self.alphas_cumprod.double()
        self.num_train_timesteps = len(self.alphas_cumprod)

    def model_timestep(self, t: torch.Tensor) -> torch.Tensor:
        n = self.num_train_timesteps
        return torch.clamp(torch.round(t.double() * n), 0, n - 1).long()

    def signal_noise(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ac = self.alphas_cumprod.to(t.device)[self.model_timestep(t)]
        return ac.sqrt().float(), (1 - ac).sqrt().float()

    def time_of(self, timestep: int) -> float:
        """The t in [0, 1] whose model timestep is `timestep` (999 -> 0.999)."""
        return timestep / self.num_train_timesteps


@dataclass
class FlowSchedule(NoiseSchedule):
    """Rectified flow of the MMDiT models (SD3, SD3.5): x_t = (1 - t) x0 + t n, sigma = t."""

    num_train_timesteps: int = 1000
    prediction: str = "flow"

    def model_timestep(self, t: torch.Tensor) -> torch.Tensor:
        return t.float() * self.num_train_timesteps

    def signal_noise(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = t.float()
        return 1 - t, t


def shift_flow_times(s: torch.Tensor, shift: float) -> torch.Tensor:
    """The flow-matching time shift t = shift s / (1 + (shift - 1) s) (SD3; FLUX's exponential shift with e^mu)."""
    return shift * s / (1 + (shift - 1) * s)


def shifted_flow_times(n_steps: int, shift: float) -> list[float]:
    """SD3-style student times: t = shift s / (1 + (shift - 1) s), s = linspace(1, 0.001, N + 1)[:N]."""
    s = torch.linspace(1.0, 0.001, n_steps + 1, dtype=torch.float64)[:n_steps]
    return [float(v) for v in shift_flow_times(s, shift)]


def uniform_discrete_timesteps(n_steps: int, num_train_timesteps: int = 1000) -> list[int]:
    """DMD2's eps students: 999, 749, 499, 249 for 4 steps (start at the last index, equal strides)."""
    stride = num_train_timesteps // n_steps
    return [num_train_timesteps - 1 - k * stride for k in range(n_steps)]
