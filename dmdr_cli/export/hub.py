"""The Hugging Face Hub side of an export: the model card's metadata, the sample grid as its widget, and the
upload (`dmdr export ... --push-to-hub REPO_ID`, `output.push` at the end of a run).

The metadata is the YAML front matter the Hub reads (written with huggingface_hub's own `ModelCardData`): the
base model when it is a hub id, the license inherited from the base model where known (its own model card in
a local folder or the hub cache, else the published licence of the known base models), the tags of the
diffusers training scripts (`text-to-image`, `diffusers`, the family, `lora` for an adapter) plus `dmdr` and
`distillation`, and a widget showing the run's last sample grid.

The upload follows the diffusers training scripts: `create_repo(exist_ok=True)`, then the whole folder in one
commit. `UploadPlan` is that commit, built without the network (what tests check); `push` sends it. The token
comes only from the standard login (`hf auth login`, `HF_TOKEN`) through `huggingface_hub.get_token()` and is
never printed: every failure is one line (no token, Hub unreachable or offline, a repo the token cannot write)
and the local export stays as written.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import DmdrError
from .student import Student

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
WIDGET_IMAGE = "images/samples.png"
# the tags diffusers' training scripts give each family (train_dreambooth_lora_{sd,sdxl,sd3}.py)
FAMILY_TAGS = {"sd": ["stable-diffusion", "stable-diffusion-diffusers"],
               "sdxl": ["stable-diffusion-xl", "stable-diffusion-xl-diffusers"],
               "sd3": ["sd3", "sd3-diffusers"]}
# published licences of the base models dmdr's recipes name: (license, license_name, license_link)
_COMMUNITY = ("other", "stabilityai-ai-community")
KNOWN_LICENSES = {
    "stable-diffusion-v1-5/stable-diffusion-v1-5": ("creativeml-openrail-m", None, None),
    "runwayml/stable-diffusion-v1-5": ("creativeml-openrail-m", None, None),
    "stabilityai/stable-diffusion-2-1": ("openrail++", None, None),
    "stabilityai/stable-diffusion-xl-base-1.0": ("openrail++", None, None),
    "stabilityai/stable-diffusion-3-medium-diffusers": (*_COMMUNITY, "https://huggingface.co/stabilityai/"
                                                        "stable-diffusion-3-medium-diffusers/blob/main/LICENSE.md"),
    "stabilityai/stable-diffusion-3.5-medium": (*_COMMUNITY, "https://huggingface.co/stabilityai/"
                                                "stable-diffusion-3.5-medium/blob/main/LICENSE.md"),
    "stabilityai/stable-diffusion-3.5-large": (*_COMMUNITY, "https://huggingface.co/stabilityai/"
                                               "stable-diffusion-3.5-large/blob/main/LICENSE.md"),
}
_LOGIN = "run `hf auth login` (or set HF_TOKEN)"


def missing_hub() -> DmdrError:
    return DmdrError("pushing to the Hub needs the huggingface_hub package: pip install huggingface_hub")


def check_repo_id(repo_id: str, what: str = "--push-to-hub") -> str:
    """A repo id the Hub accepts (`user/name` or `org/name`), refused before anything is exported."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise DmdrError(f"{what} {repo_id!r} is not a Hub repo id ({_first_line(err)}): use NAMESPACE/NAME, "
                        f"e.g. your-name/sdxl-4step-dmdr") from None
    if "/" not in repo_id:
        raise DmdrError(f"{what} {repo_id!r} has no namespace: use NAMESPACE/NAME, e.g. your-name/{repo_id}")
    return repo_id


# ---- the model card's metadata --------------------------------------------------------------------------

def base_license(pretrained: str) -> tuple[str, str | None, str | None] | None:
    """(license, license_name, license_link) of the base model: its own card (local folder or hub cache) first,
    then the known base models; None when unknown."""
    card = _base_card(pretrained)
    if card is not None and card.data.license:
        return card.data.license, card.data.get("license_name"), card.data.get("license_link")
    return KNOWN_LICENSES.get(pretrained)


def _base_card(pretrained: str):
    from huggingface_hub import ModelCard, hf_hub_download

    path = Path(pretrained).expanduser() / "README.md"
    if not path.is_file():
        if not HUB_ID.match(pretrained):
            return None
        try:  # only what is already cached: writing a card never reaches the network
            path = Path(hf_hub_download(pretrained, "README.md", local_files_only=True))
        except Exception:  # not cached (LocalEntryNotFoundError) or an unreadable cache: fall back to the table
            return None
    try:
        return ModelCard.load(path)
    except Exception:  # a base card we cannot parse only costs the licence line
        return None


def widget_source(run_dir: Path | None) -> tuple[Path, str] | None:
    """The run's last sample grid and its first prompt (samples/step-*.png, samples/prompts.txt)."""
    if run_dir is None:
        return None
    grids = sorted((run_dir / "samples").glob("step-*.png"))
    if not grids:
        return None
    prompts_file = run_dir / "samples" / "prompts.txt"
    try:
        prompt = next((p.strip() for p in prompts_file.read_text(encoding="utf-8").splitlines() if p.strip()), "")
    except (OSError, UnicodeDecodeError):
        prompt = ""
    return grids[-1], prompt


def card_metadata(student: Student, fmt: str, widget: tuple[str, str] | None) -> dict:
    """The front matter of the export's README.md, as huggingface_hub's ModelCardData writes it."""
    from huggingface_hub import ModelCardData

    model = student.source.recipe.model
    adapter = fmt in ("lora", "comfyui") or (fmt == "safetensors" and not student.merged and
                                             student.source.lora is not None)
    tags = ["text-to-image", "diffusers", *FAMILY_TAGS.get(model.family, [model.family]), "dmdr", "distillation",
            "diffusers-training"] + (["lora"] if student.source.lora is not None else [])
    fields: dict = {"library_name": "diffusers", "pipeline_tag": "text-to-image", "tags": tags}
    if HUB_ID.match(model.pretrained) and not Path(model.pretrained).expanduser().exists():
        fields["base_model"] = model.pretrained
        fields["base_model_relation"] = "adapter" if adapter else "finetune"
    license_ = base_license(model.pretrained)
    if license_ is not None:
        fields["license"], fields["license_name"], fields["license_link"] = license_
    if widget is not None:
        url, prompt = widget
        fields["widget"] = [{"text": prompt, "output": {"url": url}}]
    data = ModelCardData(**{k: v for k, v in fields.items() if v is not None})
    return data.to_dict()


def add_hub_metadata(card: str, student: Student, fmt: str, folder: Path) -> str:
    """`card` with the Hub's front matter on top; the run's last sample grid is copied into the export as the
    widget image."""
    from huggingface_hub import ModelCardData

    source = widget_source(student.source.run_dir)
    widget = None
    if source is not None:
        (folder / Path(WIDGET_IMAGE).parent).mkdir(exist_ok=True)
        shutil.copyfile(source[0], folder / WIDGET_IMAGE)
        widget = (WIDGET_IMAGE, source[1])
    meta = card_metadata(student, fmt, widget)
    body = card
    if widget is not None:  # under the title, where the Hub shows it too
        title, rest = card.split("\n\n", 1)
        body = f"{title}\n\n![the run's last sample grid]({WIDGET_IMAGE})\n\n{rest}"
    if "license" not in meta:
        body += (f"\n## License\n\nNot known to dmdr: the student inherits the licence of its base model "
                 f"({student.source.recipe.model.pretrained}).\n")
    return f"---\n{ModelCardData(**meta).to_yaml()}\n---\n\n{body}"


# ---- the upload ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class UploadPlan:
    """One commit of a whole export folder to a model repo, as the diffusers training scripts push."""

    repo_id: str
    private: bool
    commit_message: str
    files: tuple[tuple[str, Path], ...]  # (path in the repo, local file)
    repo_type: str = "model"

    def operations(self):
        from huggingface_hub import CommitOperationAdd

        return [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path)) for name, path in self.files]


def upload_plan(folder: Path, repo_id: str, *, private: bool, commit_message: str) -> UploadPlan:
    folder = Path(folder)
    files = tuple((p.relative_to(folder).as_posix(), p) for p in sorted(folder.rglob("*")) if p.is_file())
    return UploadPlan(repo_id=check_repo_id(repo_id), private=private, commit_message=commit_message, files=files)


def export_commit_message(source, fmt: str) -> str:
    return f"dmdr export: {fmt}, generator step {source.step}"


def push(plan: UploadPlan, folder: Path) -> str:
    """Create the repo if needed and upload the plan in one commit; returns the commit's URL."""
    from huggingface_hub import HfApi, get_token

    retry = f"the export is complete in {folder}: fix that and upload it with `hf upload {plan.repo_id} {folder}`"
    token = get_token()
    if not token:
        raise DmdrError(f"no Hugging Face token to push {plan.repo_id} with: {_LOGIN}; {retry}")
    api = HfApi(token=token, endpoint=os.environ.get("HF_ENDPOINT") or None)
    try:
        repo = api.create_repo(plan.repo_id, repo_type=plan.repo_type, private=plan.private, exist_ok=True)
        commit = api.create_commit(repo.repo_id, plan.operations(), commit_message=plan.commit_message,
                                   repo_type=plan.repo_type)
    except Exception as err:
        raise DmdrError(_push_failure(err, plan.repo_id, token) + f"; {retry}") from None
    return commit.commit_url


def _push_failure(err: Exception, repo_id: str, token: str) -> str:
    """One line for why a push failed (never the token); anything that is not a Hub or network failure is a bug."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    detail = _first_line(err).replace(token, "***")
    if isinstance(err, OfflineModeIsEnabled):
        return f"cannot push {repo_id}: the Hub is offline here (HF_HUB_OFFLINE=1); unset it on a machine online"
    if isinstance(err, HfHubHTTPError):
        status = err.response.status_code if err.response is not None else None
        if status == 401:
            return f"the Hub refused the token for {repo_id} (401: {detail}): {_LOGIN} again"
        if status in (403, 404):
            return (f"the token cannot write to {repo_id} ({status}: {detail}): use a repo in your namespace or an "
                    f"organisation you can write to, with a token that has write access")
        return f"the Hub answered {status} for {repo_id} ({detail})"
    if isinstance(err, (ConnectionError, TimeoutError, OSError)) or type(err).__module__.split(".")[0].startswith(
            ("httpx", "requests", "urllib3")):
        return f"cannot reach the Hugging Face Hub to push {repo_id} ({type(err).__name__}: {detail})"
    raise err


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
