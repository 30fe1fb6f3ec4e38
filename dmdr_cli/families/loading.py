"""Loading a diffusers pipeline folder (or hub id) one component at a time, with errors a user can act on.

The family adapters need the pieces of a pipeline, not the pipeline object: a denoiser that may come
from a single-file fine-tune, text encoders that may be skipped, a scheduler config without a
scheduler. Like `DiffusionPipeline.from_pretrained`, the class of each component is read from
model_index.json ({"unet": ["diffusers", "UNet2DConditionModel"], ...}) and loaded from its subfolder.

Every problem the user can fix (wrong path, wrong family, incomplete download) becomes a one-line
`ModelLoadError`; diffusers / transformers are imported only inside functions (the CLI starts fast).
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..runtime.files import read_json
from ..errors import ModelLoadError

# Inside `architecture_only()`: models are built from their configs, no weight is read (the memory planner runs
# the real loading code under torch's FakeTensorMode, where building allocates nothing).
_ARCHITECTURE_ONLY = contextvars.ContextVar("dmdr_architecture_only", default=False)


@contextlib.contextmanager
def architecture_only():
    """Within: `PipelineSource.load` builds each model from its config.json instead of loading its weights (under
    FakeTensorMode: shapes and dtypes only). Tokenizers and single-file weights are not available."""
    token = _ARCHITECTURE_ONLY.set(True)
    try:
        yield
    finally:
        _ARCHITECTURE_ONLY.reset(token)


def _from_config(cls, config: dict, dtype: torch.dtype | None):
    """A model of `cls` built from `config` (random initial weights) in `dtype`, the default dtype while it is
    built (as from_pretrained's torch_dtype: no fp32 copy first)."""
    if not hasattr(cls, "from_config"):
        raise ModelLoadError(f"{cls.__name__} cannot be built from its config alone (architecture_only)")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype or previous)
    try:
        return cls.from_config(config)
    finally:
        torch.set_default_dtype(previous)


# Pipeline class-name prefixes -> family, most specific first (img2img / inpaint variants share them).
_PIPELINE_PREFIXES = (("StableDiffusion3", "sd3"), ("StableDiffusionXL", "sdxl"), ("StableDiffusion", "sd"),
                      ("Flux", "flux"))
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def family_of_pipeline(class_name: str) -> str | None:
    """The family of a model_index.json `_class_name` (StableDiffusionXLPipeline -> sdxl), None if unknown."""
    for prefix, family in _PIPELINE_PREFIXES:
        if class_name.startswith(prefix):
            return family
    return None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


@dataclass
class PipelineSource:
    """A resolved `model.pretrained`: where it is and what its model_index.json lists."""

    pretrained: str
    index: dict
    local: bool
    revision: str | None = None
    variant: str | None = None

    def has(self, component: str) -> bool:
        """Whether model_index.json lists `component` with a class (diffusers writes [null, null] for none)."""
        entry = self.index.get(component)
        return isinstance(entry, (list, tuple)) and len(entry) == 2 and entry[1] is not None

    def require(self, component: str) -> None:
        if not self.has(component):
            raise ModelLoadError(
                f"{self.pretrained} has no {component} (model_index.json lists none): it is not a complete "
                f"text-to-image pipeline of this family; point model.pretrained at the full base-model folder")
        if self.local and not (Path(self.pretrained) / component).is_dir():
            raise ModelLoadError(
                f"model_index.json of {self.pretrained} lists {component} but the folder {component}/ is missing: "
                f"the download or copy is incomplete; fetch the whole pipeline again")

    def _class(self, component: str):
        library, class_name = self.index[component]
        if library not in ("diffusers", "transformers"):
            raise ModelLoadError(f"{self.pretrained}: {component} comes from library {library!r}; dmdr loads "
                                 f"diffusers and transformers components only")
        cls = getattr(importlib.import_module(library), class_name, None)
        if cls is None:
            raise ModelLoadError(f"{self.pretrained}: {component} is a {library}.{class_name}, which the installed "
                                 f"{library} does not provide; upgrade {library}")
        return cls, library

    def load(self, component: str, dtype: torch.dtype | None = None):
        """Load a model or tokenizer with from_pretrained(subfolder=component); models are put in `dtype`."""
        self.require(component)
        cls, library = self._class(component)
        kwargs: dict = {"subfolder": component, "revision": self.revision}
        if issubclass(cls, torch.nn.Module):  # weights: tokenizers have neither variants nor dtypes
            kwargs["variant"] = self.variant
            if dtype is not None:  # transformers 5 renamed torch_dtype to dtype
                kwargs["torch_dtype" if library == "diffusers" else "dtype"] = dtype
        if _ARCHITECTURE_ONLY.get():
            return _from_config(cls, self.load_config(component), dtype)
        try:
            return cls.from_pretrained(self.pretrained, **kwargs)
        except OSError as err:  # missing weight files, a variant that is not there, no cached copy offline
            raise ModelLoadError(f"could not load {component} of {self.pretrained}: {_first_line(err)}") from err

    def load_config(self, component: str) -> dict:
        """A component's config.json (scheduler_config.json for schedulers) without loading weights."""
        self.require(component)
        cls, _ = self._class(component)
        try:
            return dict(cls.load_config(self.pretrained, subfolder=component, revision=self.revision))
        except OSError as err:
            raise ModelLoadError(f"could not read the {component} config of {self.pretrained}: "
                                 f"{_first_line(err)}") from err

    def load_single_file(self, component: str, path: str, dtype: torch.dtype):
        """A denoiser from one .safetensors / .ckpt, its config from this pipeline's `component` folder.

        diffusers' `from_single_file` takes both original (ldm / sgm / mmdit) keys and diffusers keys, and
        `config=` keeps it offline. Parameters the file lacks would stay on the meta device: refuse those.
        """
        file = Path(path).expanduser()
        if not file.is_file():
            raise ModelLoadError(f"model.single_file: {path} does not exist: point it at the fine-tune's "
                                 f".safetensors file, or remove model.single_file to use {self.pretrained} as is")
        from diffusers.loaders.single_file_utils import SingleFileComponentError

        self.require(component)
        cls, _ = self._class(component)
        try:
            model = cls.from_single_file(str(file), config=self.pretrained, subfolder=component,
                                         revision=self.revision, torch_dtype=dtype)
        except (SingleFileComponentError, OSError, ValueError, KeyError, RuntimeError) as err:
            raise ModelLoadError(f"could not load {path} as the {component} of {self.pretrained}: "
                                 f"{_first_line(err)}") from err
        missing = [name for name, p in model.named_parameters() if p.is_meta]
        if missing:
            raise ModelLoadError(f"{path} lacks {len(missing)} {component} weights (e.g. {missing[0]}): it is not "
                                 f"a checkpoint of the model in {self.pretrained}; check model.family and "
                                 f"model.pretrained")
        return model


def resolve_pipeline(model_cfg, family: str) -> PipelineSource:
    """Find `model_cfg.pretrained` (local folder or hub id), read model_index.json and check the family."""
    pretrained = str(model_cfg.pretrained)
    revision, variant = getattr(model_cfg, "revision", None), getattr(model_cfg, "variant", None)
    path = Path(pretrained).expanduser()
    if path.is_dir():
        index_file = path / "model_index.json"
        if not index_file.is_file():
            raise ModelLoadError(_no_model_index_message(path))
        index = read_json(index_file, "model.pretrained: the pipeline index", kind=dict,
                          fix="the folder is damaged; copy the model again or point model.pretrained at another one")
        local, pretrained = True, str(path)
    elif path.exists():
        raise ModelLoadError(
            f"model.pretrained: {pretrained} is a file, not a pipeline folder: set model.single_file to it and "
            f"point model.pretrained at the diffusers folder (or hub id) of its base model")
    elif _HUB_ID.match(pretrained):
        index, local = _hub_model_index(pretrained, revision), False
    else:
        raise ModelLoadError(
            f"model.pretrained: {pretrained} does not exist: point it at a diffusers pipeline folder "
            f"(the one with model_index.json) or a hub id such as stabilityai/stable-diffusion-xl-base-1.0")

    class_name = index.get("_class_name", "")
    found = family_of_pipeline(class_name)
    if found is not None and found != family:
        raise ModelLoadError(
            f"{pretrained} is a {class_name} folder (family {found}) but the recipe says model.family: {family}; "
            f"set model.family: {found}")
    return PipelineSource(pretrained, index, local, revision, variant)


def _no_model_index_message(path: Path) -> str:
    config = path / "config.json"
    if config.is_file():
        try:
            kind = json.loads(config.read_text()).get("_class_name") or "single model"
        except (OSError, ValueError):
            kind = "single model"
        return (f"{path} is a {kind} folder, not a pipeline (no model_index.json): point model.pretrained at the "
                f"pipeline folder that contains it")
    return (f"{path} has no model_index.json: model.pretrained must be a diffusers pipeline folder (as written by "
            f"pipeline.save_pretrained); for a single checkpoint file set model.single_file and point "
            f"model.pretrained at its base model")


def _hub_model_index(repo_id: str, revision: str | None) -> dict:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        file = hf_hub_download(repo_id, "model_index.json", revision=revision)
    except (OSError, ValueError, EntryNotFoundError) as err:
        raise ModelLoadError(
            f"model.pretrained: {repo_id} is not a local folder and its model_index.json could not be fetched from "
            f"the Hugging Face hub ({_first_line(err)}); check the path, or download it first "
            f"(`hf download {repo_id}`) when running offline") from err
    return read_json(file, "model_index.json of the hub model", kind=dict,
                     fix=f"the cached download is damaged; delete it and download {repo_id} again")


def module_dtype(net: torch.nn.Module) -> torch.dtype:
    """The dtype a network computes in (its first floating parameter's)."""
    dtype = getattr(net, "dtype", None)
    if isinstance(dtype, torch.dtype):
        return dtype
    return next(p.dtype for p in net.parameters() if p.is_floating_point())


def place(module: torch.nn.Module, device) -> torch.nn.Module:
    """`module` on `device`; one already there is left as it is (FakeTensorMode refuses converting fake parameters
    in place, even to where they are: the memory planner loads models that way)."""
    device = torch.device(device)
    if any(t.device != device for t in list(module.parameters()) + list(module.buffers())):
        module.to(device)
    return module


def freeze(module: torch.nn.Module | None, device) -> torch.nn.Module | None:
    """Eval mode, no parameter gradients, on `device` (text encoders and VAE are never trained)."""
    if module is not None:
        place(module, device).eval().requires_grad_(False)
    return module


def load_components(source: PipelineSource, model_cfg, *, denoiser: str, text_pairs: tuple[tuple[str, str], ...],
                    optional_text: tuple[str, ...] = (), device="cpu", dtype: torch.dtype = torch.float32,
                    with_text_encoders: bool = True, with_vae: bool = True):
    """Load what a family needs; returns (Components, VAE config or None for a pixel-space model).

    `text_pairs` are (tokenizer, text_encoder) folder names, kept in order; an encoder named in
    `optional_text` that the pipeline lacks (SD3 without T5) is a None entry in both lists. The VAE
    config is read even when the VAE is not loaded: the latent shape and scaling depend on it.
    """
    from .base import Components

    single_file = getattr(model_cfg, "single_file", None)
    if single_file:
        net = source.load_single_file(denoiser, single_file, dtype)
    else:
        net = source.load(denoiser, dtype)
    place(net, device)

    vae_config = source.load_config("vae") if source.has("vae") else None
    vae = None
    if with_vae and vae_config is not None:
        # SDXL's VAE overflows in fp16 (config force_upcast): the diffusers pipelines decode it in fp32
        upcast = dtype == torch.float16 and vae_config.get("force_upcast", False)
        vae = freeze(source.load("vae", torch.float32 if upcast else dtype), device)

    tokenizers, encoders = [], []
    if with_text_encoders:
        for tokenizer_name, encoder_name in text_pairs:
            if encoder_name in optional_text and not source.has(encoder_name):
                tokenizers.append(None)
                encoders.append(None)
                continue
            tokenizers.append(source.load(tokenizer_name))
            encoders.append(freeze(source.load(encoder_name, dtype), device))

    origin = source.pretrained + (f"@{source.revision}" if source.revision else "")
    components = Components(
        denoiser=net, vae=vae, text_encoders=encoders, tokenizers=tokenizers,
        scheduler_config=source.load_config("scheduler"),
        source=f"{single_file} (config: {origin})" if single_file else origin,
    )
    return components, vae_config


def size_multiple(model_cfg) -> int:
    """What an image side must be a multiple of for this model: the VAE's downsampling factor, times the
    transformer's patch size for an MMDiT (as the diffusers pipelines check), read from configs, no weights."""
    from . import FAMILIES

    source = resolve_pipeline(model_cfg, model_cfg.family)
    factor = 2 ** (len(source.load_config("vae").get("block_out_channels", [0])) - 1) if source.has("vae") else 1
    patch = source.load_config(FAMILIES[model_cfg.family].denoiser_subfolder).get("patch_size") or 1
    return factor * int(patch)


def check_resolution(model_cfg, what: str = "model.resolution") -> None:
    multiple = size_multiple(model_cfg)
    if model_cfg.resolution % multiple:
        raise ModelLoadError(f"{what} {model_cfg.resolution} is not a multiple of {multiple}, the latent factor of "
                             f"{model_cfg.pretrained}: use {model_cfg.resolution // multiple * multiple or multiple} "
                             f"or {(model_cfg.resolution // multiple + 1) * multiple}")
