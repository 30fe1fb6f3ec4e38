"""Real images for the opt-in GAN term (`data.images`): a folder of images with optional captions, or a built-in
source (`builtin:NAME`, registered by a plug-in: builtin:world-renders draws fresh renders of the shapes world).

Which image global sample i gets is a pure function of (seed, i), like its prompt (data/prompts.py), so a
resumed run sees exactly the images the uninterrupted one would have. A folder is listed and every image in it
verified (PIL's header and checksum check, no decoding) before any weight loads; images are decoded when drawn.
Captions: `photo.txt` beside `photo.png` is its caption; an image without one is conditioned on the
unconditional input (the caller's `guidance.uncond`), which is what a caption-free image says about its prompt.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Callable, Protocol

from .. import builtin_plugins
from ..errors import DmdrError
from ..runtime import files
from .prompts import prompt_index

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
SEED_SALT = 0x6A4E  # real images are ordered by their own permutation, not the prompts'


class ImageSource(Protocol):
    """What a real-image source gives: its size, its captions, and an image (any size, RGB) with its caption."""

    description: str

    def __len__(self) -> int: ...

    def captions(self) -> list[str]:
        """Every caption `draw` can return (encoded once with the prompts, before the text encoders go)."""
        ...

    def draw(self, index: int, sample_id: int):
        """(image, caption or None) of entry `index`; `sample_id` seeds what a generative source draws."""
        ...


BUILTIN: dict[str, Callable[[int, int], ImageSource]] = {}


def register_image_source(name: str, factory: Callable[[int, int], ImageSource]) -> None:
    """`factory(resolution, seed)` -> an ImageSource, for `data.images: builtin:NAME`."""
    BUILTIN[name] = factory


def open_images(spec: str, resolution: int, seed: int) -> "RealImages":
    """`data.images` checked and opened (one line if it cannot be used), before any weight loads."""
    if spec.startswith("builtin:"):
        factory = builtin_plugins.lookup(spec, BUILTIN, "images", "image source (data.images)", "give a folder of images")
        return RealImages(factory(resolution, seed), resolution, seed)
    return RealImages(ImageFolder(Path(spec)), resolution, seed)


class ImageFolder:
    """Every image under a folder (recursively, sorted), each with its same-stem .txt caption if there is one."""

    FIX = "point data.images at a folder of .png, .jpg, .jpeg or .webp images"

    def __init__(self, folder: Path):
        self.folder = folder
        self.paths = _image_files(folder, self.FIX)
        if not self.paths:
            raise DmdrError(f"data.images {folder} holds no images: {self.FIX}")
        fix = "replace or delete it, or point data.images at another folder"
        for path in self.paths:
            files.check_image(path, "data.images image", fix)
        self._captions = [_caption(path, fix) for path in self.paths]
        captioned = sum(c is not None for c in self._captions)
        self.description = f"{len(self.paths)} images from {folder} ({captioned} with a caption)"

    def __len__(self) -> int:
        return len(self.paths)

    def captions(self) -> list[str]:
        return [c for c in self._captions if c is not None]

    def draw(self, index: int, sample_id: int):
        return files.open_image(self.paths[index], "data.images image", "replace or delete it"), self._captions[index]


def _image_files(folder: Path, fix: str) -> list[Path]:
    """The image files under `folder`; a missing, non-folder or unlistable folder (or subfolder) is one line."""
    try:
        if not folder.is_dir():
            what = "does not exist" if not os.path.lexists(folder) else "is not a folder"
            raise DmdrError(f"data.images {folder} {what}: {fix}")
        os.listdir(folder)  # os.walk would skip an unreadable folder in silence
    except OSError as err:
        raise DmdrError(f"data.images {folder} cannot be read ({files.reason(err)}): {fix}") from None

    def fail(err: OSError):
        if err.errno != errno.ENOENT:
            raise DmdrError(f"data.images {err.filename} cannot be read ({files.reason(err)}): {fix}") from None

    found = []
    for root, dirs, names in os.walk(folder, onerror=fail):
        dirs.sort()
        found += [Path(root) / n for n in sorted(names) if Path(n).suffix.lower() in IMAGE_SUFFIXES]
    return found


def _caption(path: Path, fix: str) -> str | None:
    text_file = path.with_suffix(".txt")
    if not text_file.is_file():
        return None
    caption = " ".join(files.read_text(text_file, "caption file", fix).split())
    return caption or None


class RealImages:
    """A source made uniform: the images of global sample ids as one batch at `resolution`, with their captions."""

    def __init__(self, source: ImageSource, resolution: int, seed: int):
        self.source, self.resolution, self.seed = source, resolution, seed
        self.description = source.description

    def captions(self) -> list[str]:
        return self.source.captions()

    def batch(self, sample_ids: list[int]):
        """(images [B, 3, R, R] float in [0, 1] on the CPU, captions: a str or None per image)."""
        import numpy as np
        import torch

        images, captions = [], []
        for i in sample_ids:
            image, caption = self.source.draw(prompt_index(i, len(self.source), self.seed + SEED_SALT), i)
            images.append(square(image, self.resolution))
            captions.append(caption)
        array = np.stack(images).astype(np.float32) / 255.0
        return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous(), captions


def square(image, resolution: int):
    """An R x R x 3 uint8 array: the image centre-cropped to a square and resized (bicubic), as DMD2's data is."""
    import numpy as np
    from PIL import Image, ImageOps

    if isinstance(image, np.ndarray):
        if image.shape[:2] == (resolution, resolution):
            return image
        image = Image.fromarray(image)
    image = image.convert("RGB")
    if image.size != (resolution, resolution):
        image = ImageOps.fit(image, (resolution, resolution), Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.uint8)
