"""The shapes world as an evaluation domain (evaluate/domains.py): `dmdr sample` and `dmdr evaluate` draw
its models' GenEval and DPG image sets from the world's own prompts, score them with the exact detector
(world/bench.py), and add world-distance, the Fréchet distance to real renders of the same prompts."""

from __future__ import annotations

from pathlib import Path

from ..errors import DmdrError
from ..evaluate.domains import register_domain

TEACHER = Path(__file__).resolve().parent / "weights" / "teacher"
TEACHER_SUFFIX = ("dmdr_cli", "world", "weights", "teacher")
DISTANCE = "world-distance"


def is_world_model(cfg) -> bool:
    """A recipe distilling a shapes-world teacher: a pipeline folder that `dmdr world teacher` wrote (its
    recipe.yaml has a world.teacher section). Its report is the world table."""
    import yaml

    written_by = Path(cfg.model.pretrained) / "recipe.yaml"
    if not (written_by.is_file() and (written_by.parent / "model_index.json").is_file()):
        return False
    try:
        recipe = yaml.safe_load(written_by.read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(recipe, dict) and isinstance(recipe.get("world"), dict) and "teacher" in recipe["world"]


class WorldDomain:
    name = "world"
    benches = (DISTANCE,)
    score_prompts = "builtin:world-val"

    def claims_recipe(self, recipe) -> bool:
        """It distils a teacher `dmdr world teacher` wrote, or configures the world."""
        from ..recipe.schema import WorldSection

        return self.claims_pretrained(recipe.model.pretrained) or is_world_model(recipe) or \
            recipe.world != WorldSection()

    def claims_pretrained(self, pretrained: str) -> bool:
        """The built-in teacher's folder, named relative to any working directory."""
        path = Path(pretrained).expanduser()
        if path.exists() and path.resolve() == TEACHER:
            return True
        return tuple(path.parts[-len(TEACHER_SUFFIX):]) == TEACHER_SUFFIX

    def claims_folder(self, folder: Path) -> bool:
        from ..runtime import files
        from . import bench

        if (folder / bench.ITEMS_FILE).is_file():
            return True
        metadata = sorted(folder.glob("[0-9]*/metadata.jsonl"))[:1]
        return bool(metadata) and bench.is_world_metadata(
            [files.read_json(metadata[0], "GenEval metadata", fix="the folder is damaged")])

    def check_size(self, height: int, width: int) -> None:
        from .scene import check_size

        if height != width:
            raise DmdrError(f"shapes-world images are square: --height {height} and --width {width} differ")
        check_size(height)

    def geneval_set(self, size: int, per_prompt: int, num_prompts: int | None):
        from ..evaluate.sample_sets import GenEvalSet
        from .bench import world_geneval_metadata

        records, source = world_geneval_metadata(size, num_prompts)
        return GenEvalSet(records, per_prompt, source)

    def dpg_set(self, size: int, num_prompts: int | None):
        from ..evaluate.sample_sets import DpgSet
        from .bench import world_dpg_items, write_items

        items, source = world_dpg_items(size, num_prompts)
        return DpgSet([i["item_id"] for i in items], [i["prompt"] for i in items], source,
                      prepare=lambda out: write_items(out, items))

    def sample_kind(self, bench: str) -> str:
        return "geneval" if bench == DISTANCE else bench

    def score(self, bench: str, folder: Path, settings: dict, report_dir: Path) -> dict:
        from . import bench as world_bench

        if bench == "geneval":
            return {"prompt_set": settings.get("prompts", f"metadata.jsonl files of {folder}"),
                    **world_bench.geneval_folder(folder, report_dir / "results.jsonl")}
        if bench == "dpg":
            return {"prompt_set": settings.get("prompts", f"{world_bench.ITEMS_FILE} of {folder}"),
                    **world_bench.dpg_folder(folder)}
        return {"title": "World distance",
                **world_bench.distance_folder(folder, features_path=report_dir / world_bench.FEATURES_FILE)}


register_domain(WorldDomain())
