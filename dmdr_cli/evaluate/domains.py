"""Evaluation domains: models judged on benches of their own rather than on the official ones.

The official benches (the score table, GenEval with Mask2Former, DPG-Bench with a VQA model) judge real
text-to-image models. A miniature world, such as the built-in shapes world, brings its own prompts and an
exact judge instead. It plugs in here, as run benches plug into training (plugins.py), so `dmdr sample` and
`dmdr evaluate` hold no line specific to one world. A domain

- claims its models (`claims_recipe`, `claims_pretrained`) and image folders (`claims_folder`);
- checks an image size (`check_size`) and writes the GenEval and DPG image sets from its own prompts
  (`geneval_set`, `dpg_set`), with GenEval's and DPG-Bench's folder layouts;
- may add benches of its own (`benches`), each reading the image set `sample_kind(bench)` names;
- scores a folder (`score`, main process) into a report section in report.py's layout;
- names the prompts of the score table when `--model` comes without `--prompts` (`score_prompts`).

The command-line options of the official benches (--geneval-metadata, --dpg-csv, --vqa-model, ...) are refused
for a domain's model in one place (`refuse_official_options`). Domains register with `register_domain`; the
built-in ones are loaded on first lookup (dmdr_cli/builtin_plugins.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from ..errors import DmdrError

OFFICIAL = "official"  # --domain official: the official benches, whatever the model looks like


class EvalDomain(Protocol):
    name: str  # its benches' titles read "<name>-GenEval", "<name>-DPG"
    benches: tuple[str, ...]  # benches of its own, beyond scores, geneval and dpg
    score_prompts: str  # read_prompts spec for the score table of a --model without --prompts

    def claims_recipe(self, recipe) -> bool: ...

    def claims_pretrained(self, pretrained: str) -> bool: ...

    def claims_folder(self, folder: Path) -> bool: ...

    def check_size(self, height: int, width: int) -> None: ...

    def geneval_set(self, size: int, per_prompt: int, num_prompts: int | None): ...

    def dpg_set(self, size: int, num_prompts: int | None): ...

    def sample_kind(self, bench: str) -> str: ...

    def score(self, bench: str, folder: Path, settings: dict, report_dir: Path) -> dict: ...


_DOMAINS: dict[str, EvalDomain] = {}


def register_domain(domain: EvalDomain, *, replace: bool = False) -> None:
    if domain.name == OFFICIAL or (domain.name in _DOMAINS and not replace and _DOMAINS[domain.name] is not domain):
        raise ValueError(f"evaluation domain {domain.name!r} is already registered")
    _DOMAINS[domain.name] = domain


def unregister_domain(name: str) -> None:
    _DOMAINS.pop(name, None)


def all_domains() -> list[EvalDomain]:
    from .. import builtin_plugins

    builtin_plugins.load("domains")
    return list(_DOMAINS.values())


def get_domain(name: str | None) -> EvalDomain | None:
    """The domain called `name`; None for None and "official"."""
    if name in (None, OFFICIAL):
        return None
    found = {d.name: d for d in all_domains()}
    if name not in found:
        raise DmdrError(f"--domain {name!r}: choose {OFFICIAL} (the official benches) or one of "
                        f"{', '.join(sorted(found)) or 'no registered domain'}")
    return found[name]


def chosen(name: str) -> str | None:
    """--domain NAME as a subject records it: the domain's name, None for "official" (unknown names refused)."""
    return None if get_domain(name) is None else name


def domain_bench_names() -> tuple[str, ...]:
    return tuple(bench for domain in all_domains() for bench in domain.benches)


def of_recipe(recipe) -> str | None:
    return next((d.name for d in all_domains() if d.claims_recipe(recipe)), None)


def of_pretrained(pretrained: str) -> str | None:
    return next((d.name for d in all_domains() if d.claims_pretrained(pretrained)), None)


def of_folder(folder: Path) -> str | None:
    return next((d.name for d in all_domains() if d.claims_folder(folder)), None)


def refuse_official_options(domain: str | None, options: dict[str, object]) -> None:
    """`options`: {flag: value} of the official benches' inputs; any given one is refused for a domain's model."""
    if domain in (None, OFFICIAL):
        return
    for flag, value in options.items():
        if value not in (None, False):
            raise DmdrError(f"{flag} belongs to the official benchmarks: a {domain} model is judged by its domain's own "
                            f"prompts and judges; drop {flag} (or pass --domain {OFFICIAL})")


def title_prefix(subject: dict) -> str:
    """"<domain>-" for a report on a domain's model, "" for the official benches."""
    domain = subject.get("domain")
    return f"{domain}-" if domain and domain != OFFICIAL else ""


def distance_sections(benches: dict) -> dict[str, dict]:
    """A domain's Fréchet-distance benches: sections with a "distance" and a "title"."""
    return {name: b for name, b in benches.items() if isinstance(b, dict) and "distance" in b and "title" in b}
