"""Files from outside the run (--init weights, reward checkpoints, models, recipes) are data, never code:
no pickle is loaded with arbitrary objects allowed, YAML is read with safe_load, and an export writes
nothing outside --out, whatever names a model's files hold. The run's own state is safetensors + JSON."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest
import torch
from cli_output import error_line
from train_helpers import invoke, recipe

REPO = Path(__file__).resolve().parents[2]
SOURCES = sorted(p for folder in ("dmdr_cli", "scripts", "bench") for p in (REPO / folder).rglob("*.py"))

UNPICKLERS = {("pickle", "load"), ("pickle", "loads"), ("pickle", "Unpickler"), ("dill", "load"), ("dill", "loads"),
              ("joblib", "load"), ("cloudpickle", "load"), ("cloudpickle", "loads")}
UNSAFE_YAML = {"load", "load_all", "full_load", "full_load_all", "unsafe_load", "unsafe_load_all", "Loader",
               "FullLoader", "UnsafeLoader"}


def _dotted(node) -> tuple[str, str] | None:
    """("torch", "load") for `torch.load`: a module name and the attribute taken from it."""
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        return node.value.id, node.attr
    return None


def _is_true(call: ast.Call, keyword: str) -> bool:
    return any(k.arg == keyword and isinstance(k.value, ast.Constant) and k.value.value is True for k in call.keywords)


def unsafe_loads(source: str, where: str) -> list[str]:
    """Every place in `source` that could unpickle arbitrary objects or build them from YAML tags. An AST
    walk, not a text grep: it also sees calls split over lines and `torch.load` passed around uncalled."""
    tree = ast.parse(source)
    safe = {id(n.func) for n in ast.walk(tree)
            if isinstance(n, ast.Call) and _dotted(n.func) == ("torch", "load") and _is_true(n, "weights_only")}
    found = []
    for node in ast.walk(tree):
        at, name = f"{where}:{getattr(node, 'lineno', '?')}", _dotted(node)
        if name == ("torch", "load") and id(node) not in safe:
            found.append(f"{at}: torch.load without weights_only=True")
        elif name in UNPICKLERS:
            found.append(f"{at}: {'.'.join(name)}")
        elif name and name[0] == "yaml" and name[1] in UNSAFE_YAML:
            found.append(f"{at}: yaml.{name[1]} (yaml.safe_load builds no objects from tags)")
        elif isinstance(node, ast.Call) and _dotted(node.func) in {("np", "load"), ("numpy", "load")} \
                and _is_true(node, "allow_pickle"):
            found.append(f"{at}: numpy.load(allow_pickle=True)")
        elif isinstance(node, ast.ImportFrom) and node.module in ("torch", "pickle", "yaml") and \
                {a.name for a in node.names} & {"load", "loads", "Unpickler", *UNSAFE_YAML}:
            found.append(f"{at}: from {node.module} import {', '.join(a.name for a in node.names)}")
    return found


def test_source_tree_never_unpickles_or_builds_objects_from_yaml():
    assert len(SOURCES) > 50, "the scan sees the package"
    problems = [p for path in SOURCES for p in unsafe_loads(path.read_text(encoding="utf-8"), path.relative_to(REPO))]
    assert problems == [], "\n".join(problems)
    text_hits = sum(p.read_text(encoding="utf-8").count("torch.load(") for p in SOURCES)
    assert text_hits >= 2, "the torch.load calls that read outside files (--init, reward weights) are seen"


def test_scan_catches_each_unsafe_spelling():
    probe = ("import torch, yaml, pickle\nfrom torch import load\n"
             "torch.load('a')\ntorch.load('a', weights_only=False)\nf = torch.load\n"
             "yaml.load('x', Loader=yaml.Loader)\nyaml.unsafe_load('x')\npickle.loads(b'')\n"
             "torch.load('ok', weights_only=True)\nyaml.safe_load('ok')\n")
    assert sorted(int(line.split(":")[1]) for line in unsafe_loads(probe, "probe")) == [2, 3, 4, 5, 6, 6, 7, 8]


class _Payload:
    """Unpickling this calls open(marker, "w"): the file appearing means code from the file ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def malicious_pickle(folder: Path) -> tuple[Path, Path]:
    marker, path = folder / "pwned", folder / "evil.pt"
    torch.save({"weight": _Payload(marker)}, path)
    torch.load(path, weights_only=False)["weight"].close()  # the payload is live: plain unpickling runs it
    assert marker.exists()
    marker.unlink()
    return path, marker


def test_malicious_pickle_as_init_is_refused(tiny_sd, tmp_path):
    evil, marker = malicious_pickle(tmp_path)
    run = tmp_path / "run"
    res = invoke("distill", recipe(tmp_path, "sd", tiny_sd, run), "--init", evil)
    assert res.exit_code == 2, res.output
    assert error_line(res) == (f"error: --init {evil} is not a plain tensor file (UnpicklingError); convert it "
                               f"to .safetensors")
    assert not marker.exists(), "the pickle's code never ran"
    assert not run.exists()


def test_malicious_pickle_as_reward_weights_is_refused(tmp_path):
    from dmdr_cli.errors import ModelLoadError
    from dmdr_cli.rewards.weights import load_state_dict

    evil, marker = malicious_pickle(tmp_path)
    with pytest.raises(ModelLoadError, match="torch.load\\(weights_only=True\\) refused it"):
        load_state_dict(evil)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["..", "../escape", "a/b", "/etc", "", ".", "a\\b"])
def test_export_names_cannot_leave_the_folder(name, tmp_path):
    from dmdr_cli.errors import DmdrError
    from dmdr_cli.export.output import inside

    with pytest.raises(DmdrError, match="would lead outside the export folder"):
        inside(tmp_path, name)


def test_export_refuses_a_teacher_component_named_outside_out(tiny_sd, tmp_path):
    """--format diffusers copies the teacher's components by the names in its model_index.json."""
    from trained_students import train

    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_sd, teacher)
    index = json.loads((teacher / "model_index.json").read_text())
    (teacher / "model_index.json").write_text(json.dumps({**index, "../escape": ["diffusers", "AutoencoderKL"]}))
    (tmp_path / "escape").mkdir()
    train(tmp_path / "run", "sd", teacher, finetune="full")
    out = tmp_path / "exports" / "out"
    res = invoke("export", tmp_path / "run", "--format", "diffusers", "--out", out, "--dtype", "fp32")
    assert res.exit_code == 2, res.output
    assert error_line(res) == "error: refusing to write '../escape': the name would lead outside the export folder"
    assert not (tmp_path / "exports").exists()


def test_run_state_is_safetensors_and_json(tmp_path):
    """A checkpoint (weights, optimizer moments, step, recipe) round-trips through files no unpickler reads."""
    from dmdr_cli.runtime import checkpoint as ckpt

    net = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters())
    net(torch.ones(1, 3)).sum().backward()
    opt.step()
    folder = ckpt.save_checkpoint(tmp_path, 7, recipe_yaml="x: 1\n", state={"stage": "distill"}, keep=1,
                                  tensors={"generator": net.state_dict()}, optimizers={"generator": opt})
    assert {p.suffix for p in folder.iterdir()} == {".safetensors", ".json", ".yaml"}
    data = ckpt.load_checkpoint(folder)
    again = torch.optim.AdamW(net.parameters())
    ckpt.optimizer_from_files(again, *data["optim"]["generator"])
    assert data["state"]["step"] == 7
    restored, saved = again.state_dict()["state"][0], opt.state_dict()["state"][0]
    assert all(torch.equal(restored[k], saved[k]) for k in ("exp_avg", "exp_avg_sq", "step"))
