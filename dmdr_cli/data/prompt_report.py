"""What `--dry-run` says about a recipe's prompts: how many, how many repeated or empty, and how many are longer
than a text encoder sees (the pipelines truncate them, so the end of such a prompt has no effect)."""

from __future__ import annotations

from rich.console import Console

from ..errors import DmdrError
from .prompts import PromptSet, recipe_prompts

_BATCH = 1024


def over_long_counts(prompts: PromptSet, model_cfg) -> list[tuple[int, int, list[str]]]:
    """[(token limit, prompts over it, tokenizer subfolders)] for each text encoder of the recipe's model, read
    with the model's own tokenizers (special tokens included, as the pipelines count them)."""
    from ..families import FAMILIES
    from ..families.loading import resolve_pipeline

    family = FAMILIES[model_cfg.family]
    source = resolve_pipeline(model_cfg, model_cfg.family)
    counts: dict[tuple[int, int], list[str]] = {}
    for subfolder, limit in family.token_limits(model_cfg):
        if not source.has(subfolder):
            continue
        tokenizer = source.load(subfolder)
        limit = limit or tokenizer.model_max_length
        over = 0
        for start in range(0, len(prompts), _BATCH):
            batch = prompts[start:start + _BATCH]
            ids = tokenizer(batch, truncation=False, verbose=False)["input_ids"]
            over += sum(len(row) > limit for row in ids)
        counts.setdefault((limit, over), []).append(subfolder)
    return [(limit, over, names) for (limit, over), names in counts.items()]


def prompt_report(cfg) -> list[str]:
    """Lines for the plan: each prompt set's summary and its over-long prompts; a set that cannot be read is a
    warning line (the run itself would stop on it before loading weights)."""
    lines = []
    sets = [("data.prompts", False)] + ([("data.validation_prompts", True)] if cfg.data.validation_prompts else [])
    for key, validation in sets:
        try:
            prompts = recipe_prompts(cfg.data, validation=validation)
        except DmdrError as err:
            lines.append(f"[yellow]warning:[/] {key}: {err.message}")
            continue
        lines.append(f"{key}: {prompts.summary()}")
        try:
            for limit, over, names in over_long_counts(prompts, cfg.model):
                if over:
                    lines.append(f"  {over:,} longer than the {limit} tokens of {', '.join(names)}: truncated there")
                else:
                    lines.append(f"  none longer than the {limit} tokens of {', '.join(names)}")
        except DmdrError as err:
            lines.append(f"  token lengths not checked: {err.message}")
    return lines


def print_prompt_report(cfg, console: Console) -> None:
    for line in prompt_report(cfg):
        console.print(line, highlight=False)
