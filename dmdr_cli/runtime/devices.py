"""A device the user names (`--device`), checked once before anything loads: a name torch knows, of a kind dmdr
samples on, and present on this machine."""

from __future__ import annotations

from ..errors import DmdrError

KINDS = ("cpu", "cuda", "mps")


def check_device(spec: str | None, what: str = "--device") -> str | None:
    """`spec` unchanged when this machine has it; one line saying why not otherwise (None: the default device)."""
    if spec is None:
        return None
    import torch

    try:
        device = torch.device(spec.strip())
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in KINDS:
        raise DmdrError(f"{what} {spec!r} is not a device: use cpu, cuda, cuda:N (the N-th GPU) or mps")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DmdrError(f"{what} {spec}: this machine has no CUDA GPU that torch can use "
                            f"(torch.cuda.is_available() is false): use {what} cpu, or install a CUDA build of torch")
        if device.index is not None and device.index >= count:
            raise DmdrError(f"{what} {spec}: this machine has {count} CUDA GPU{'s' if count > 1 else ''} "
                            f"(cuda:0 to cuda:{count - 1})")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DmdrError(f"{what} {spec}: Apple's MPS is not available on this machine: use {what} cpu")
    return str(device)
