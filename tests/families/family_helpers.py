"""Recipe model sections and loaded families for the tiny fixture folders (imported by the family tests)."""

from dmdr_cli.recipe.schema import ModelSection

RESOLUTION = 16  # px; the tiny VAEs downsample by 2 -> 8x8 latents
T5_TOKENS = 8


def model_section(family: str, folder, **overrides) -> ModelSection:
    fields = dict(family=family, pretrained=str(folder), resolution=RESOLUTION, dtype="fp32")
    if family in ("sd3", "flux"):
        fields["max_text_tokens"] = T5_TOKENS
    return ModelSection(**{**fields, **overrides})


def load(family: str, folder, **kwargs):
    from dmdr_cli.families import load_family

    return load_family(model_section(family, folder), **kwargs)
