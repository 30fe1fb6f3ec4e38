"""The world's built-in prompt sets (builtin:world, builtin:world-val), which the teacher and the
world-clip reward also draw their dense training prompts from."""

from __future__ import annotations

from collections import Counter

from dmdr_cli.data.prompts import BUILTIN, read_prompts
from dmdr_cli.world import builtin_prompts
from dmdr_cli.world.prompts import TASKS, task_pool


def test_world_sets_are_registered_through_read_prompts():
    train, val = read_prompts("builtin:world"), read_prompts("builtin:world-val")
    assert {"world", "world-val"} <= set(BUILTIN)
    assert len(train) == builtin_prompts.TRAIN_GENEVAL + builtin_prompts.TRAIN_DENSE
    assert len(val) == builtin_prompts.VAL_GENEVAL + builtin_prompts.VAL_DENSE
    assert read_prompts("builtin:world") == train, "fixed seeds: the same list every time"


def test_geneval_part_follows_geneval_proportions():
    pools = {task: {m["prompt"] for m in task_pool(task, builtin_prompts.PROMPT_SIZE)} for task in TASKS}
    counts = Counter(next(t for t in TASKS if p in pools[t]) for p in read_prompts("builtin:world-val")[:553])
    assert counts == {"single_object": 80, "two_object": 99, "counting": 80, "colors": 94, "position": 100,
                      "color_attr": 100}


def test_validation_dense_prompts_are_held_out():
    train_dense = {item["prompt"] for item in builtin_prompts.training_dense_items()}
    val_dense = read_prompts("builtin:world-val")[builtin_prompts.VAL_GENEVAL:]
    assert len(set(val_dense)) == builtin_prompts.VAL_DENSE and not set(val_dense) & train_dense
    assert set(read_prompts("builtin:world")[builtin_prompts.TRAIN_GENEVAL:]) == train_dense
