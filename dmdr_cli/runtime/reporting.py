"""Where a run's numbers and images go besides log.jsonl (`train.report_to`): TensorBoard and Weights & Biases.

Only the main process reports (MetricsLog is disabled elsewhere). W&B is an optional extra (`dmdr[wandb]`); it
gets the resolved recipe as the run's config, the logged scalars, and the sample and validation grids as
images. Its run id is kept in the run folder (`wandb-run-id`), so `--resume` continues the same W&B run.
`WANDB_MODE=offline` writes everything under RUN/wandb/ for `wandb sync` later.
"""

from __future__ import annotations

import math
import secrets
from pathlib import Path

from ..errors import DmdrError
from .files import read_text, write_text_atomic

WANDB_ID_FILE = "wandb-run-id"


def check_report_to(report_to: list[str]) -> None:
    """Refuse, before any weight loads, a reporter whose package is missing (TensorBoard stays optional: the
    JSONL log is the record, as it always was where TensorBoard is not installed)."""
    if "wandb" in report_to:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise DmdrError("train.report_to names wandb, which is not installed: pip install 'dmdr[wandb]', or "
                            "drop wandb from train.report_to") from None


class TensorBoardReporter:
    def __init__(self, folder: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(folder))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def image(self, step: int, key: str, path: Path) -> None:
        import numpy as np
        from PIL import Image

        with Image.open(path) as image:
            self.writer.add_image(key, np.asarray(image.convert("RGB")), step, dataformats="HWC")

    def close(self) -> None:
        self.writer.close()


class WandbReporter:
    def __init__(self, run_dir: Path, config: dict, project: str, resume: bool):
        import wandb

        id_file = run_dir / WANDB_ID_FILE
        if resume and id_file.is_file():
            run_id = read_text(id_file, "the W&B run id", fix="delete it to start a new W&B run").strip()
        else:
            run_id = secrets.token_hex(6)  # a W&B run id: letters and digits
            write_text_atomic(id_file, run_id + "\n", what="the W&B run id")
        try:
            self.run = wandb.init(project=project, name=run_dir.name, id=run_id, resume="allow", dir=str(run_dir),
                                  config=config, settings=wandb.Settings(console="off", silent=True))
        except Exception as err:  # wandb's own errors (no API key, no network): the user's to fix
            if type(err).__module__.split(".")[0] != "wandb" and not isinstance(err, (OSError, ValueError)):
                raise
            raise DmdrError(f"W&B could not start a run ({_first_line(err)}): run `wandb login`, set "
                            f"WANDB_MODE=offline, or drop wandb from train.report_to") from None

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def image(self, step: int, key: str, path: Path) -> None:
        import wandb

        self.run.log({key: wandb.Image(str(path))}, step=step)

    def close(self) -> None:
        self.run.finish()


def open_reporters(report_to: list[str], run_dir: Path, *, config: dict | None = None, project: str = "dmdr",
                   resume: bool = False) -> list:
    reporters = []
    if "tensorboard" in report_to:
        try:
            reporters.append(TensorBoardReporter(run_dir / "tensorboard"))
        except ImportError:  # tensorboard not installed: the JSONL log is the record
            pass
    if "wandb" in report_to:
        reporters.append(WandbReporter(run_dir, config or {}, project, resume))
    return reporters


def finite_numbers(row: dict) -> dict[str, float]:
    """The entries of a log row a dashboard can plot (not the step and time columns)."""
    return {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and k not in ("step", "time") and math.isfinite(v)}


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
