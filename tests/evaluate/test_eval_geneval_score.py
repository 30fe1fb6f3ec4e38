import pytest

import json
import random

from dmdr_cli.evaluate.geneval_score import (
    image_result, kept_detections, relative_position, score_image, summarize, summary_counts, write_results_jsonl,
)


def det(cls, score=0.95, box=(0, 0, 10, 10), color=None):
    d = {"class": cls, "score": score, "box": box}
    if color:
        d["color"] = color
    return d


def at(cx, cy, w=10, h=10):
    return (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)


SINGLE = {"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a photo of a dog"}
THREE_CATS = {"tag": "counting", "include": [{"class": "cat", "count": 3}], "exclude": [{"class": "cat", "count": 4}],
              "prompt": "a photo of three cats"}


def position(relation, a="dog", b="cup"):
    return {"tag": "position", "include": [{"class": b, "count": 1},
                                           {"class": a, "count": 1, "position": [relation, 0]}],
            "prompt": f"a photo of a {a} {relation} a {b}"}


# --- thresholds -------------------------------------------------------------------------------------

@pytest.mark.parametrize("score, ok", [(0.3, False), (0.31, True), (0.95, True)])
def test_score_threshold_is_strictly_above_0_3(score, ok):
    assert score_image(SINGLE, [det("dog", score)])[0] is ok


def test_counting_prompts_need_0_9():
    assert score_image(THREE_CATS, [det("cat", 0.85)] * 3) == (False, "expected cat>=3, found 0")
    assert score_image(THREE_CATS, [det("cat", 0.91)] * 3) == (True, "")
    # the same 0.85 detections count under the 0.3 threshold of other tasks
    assert len(kept_detections([det("cat", 0.85)] * 3, "two_object")["cat"]) == 3


def test_counting_is_exact():
    assert score_image(THREE_CATS, [det("cat")] * 2) == (False, "expected cat>=3, found 2")
    assert score_image(THREE_CATS, [det("cat")] * 4) == (False, "expected cat<4, found 4")
    # a fourth cat below the counting threshold does not count
    assert score_image(THREE_CATS, [det("cat")] * 3 + [det("cat", 0.8)]) == (True, "")


def test_at_most_16_per_class_best_first():
    dets = [det("cat", 0.5 + i / 100) for i in range(20)]
    kept = kept_detections(dets, "two_object")["cat"]
    assert len(kept) == 16 and kept[0]["score"] == pytest.approx(0.69) and kept[-1]["score"] == pytest.approx(0.54)
    meta = {"tag": "two_object", "include": [{"class": "cat", "count": 1}], "exclude": [{"class": "cat", "count": 17}],
            "prompt": "p"}
    assert score_image(meta, dets)[0]


def test_exclude_fails_at_count_and_other_classes_are_ignored():
    meta = dict(SINGLE, exclude=[{"class": "cat", "count": 1}])
    assert score_image(meta, [det("dog"), det("cat")]) == (False, "expected cat<1, found 1")
    assert score_image(meta, [det("dog"), det("cat", 0.2), det("horse")]) == (True, "")


def test_two_object_reports_each_missing_class():
    meta = {"tag": "two_object", "include": [{"class": "cat", "count": 1}, {"class": "dog", "count": 1}], "prompt": "p"}
    assert score_image(meta, [det("horse")]) == (False, "expected cat>=1, found 0\nexpected dog>=1, found 0")


# --- colour -----------------------------------------------------------------------------------------

RED_CAR = {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}], "prompt": "a photo of a red car"}


def test_colour_given_on_detections():
    assert score_image(RED_CAR, [det("car", color="red")]) == (True, "")
    assert score_image(RED_CAR, [det("car", color="blue")]) == (False, "expected red car>=1, found 0 red; and 1 blue")


def test_colour_is_judged_on_the_top_count_only():
    assert not score_image(RED_CAR, [det("car", 0.9, color="blue"), det("car", 0.8, color="red")])[0]


def test_every_counted_detection_needs_the_colour():
    meta = {"tag": "color_attr", "include": [{"class": "car", "count": 2, "color": "red"}], "prompt": "p"}
    correct, reason = score_image(meta, [det("car", color="red"), det("car", color="green")])
    assert not correct and reason == "expected red car>=2, found 1 red; and 1 red, 1 green"


def test_colour_classifier_called_for_detections_without_colour():
    calls = []

    def classify(dets, classname):
        calls.append((len(dets), classname))
        return ["red"] * len(dets)

    assert score_image(RED_CAR, [det("car")], classify) == (True, "")
    assert calls == [(1, "car")]
    with pytest.raises(ValueError, match="no colour classifier"):
        score_image(RED_CAR, [det("car")])


# --- position ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("a_center, relation", [
    ((10, 50), "left of"), ((90, 50), "right of"), ((50, 10), "above"), ((50, 90), "below"),
])
def test_each_relation(a_center, relation):
    assert relative_position(at(*a_center), at(50, 50)) == {relation}
    assert score_image(position(relation), [det("cup", box=at(50, 50)), det("dog", box=at(*a_center))]) == (True, "")
    wrong = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}[relation]
    correct, reason = score_image(position(wrong), [det("cup", box=at(50, 50)), det("dog", box=at(*a_center))])
    assert not correct and reason == f"expected dog {wrong} target, found {relation} target"


def test_diagonal_offsets_hold_both_relations():
    assert relative_position(at(60, 60), at(50, 50)) == {"right of", "below"}
    # 20 across, 5 down: dy / |offset| = 0.24, horizontal only
    assert relative_position(at(70, 55), at(50, 50)) == {"right of"}


def test_margin_of_a_tenth_of_the_sizes_cancels_close_boxes():
    # centres 12 px apart: small boxes relate, 60 px wide boxes do not (12 - 0.1 * (60 + 60) = 0)
    assert relative_position(at(62, 50), at(50, 50)) == {"right of"}
    assert relative_position(at(62, 50, w=60), at(50, 50, w=60)) == set()
    correct, reason = score_image(position("right of"), [det("cup", box=at(50, 50, w=60)),
                                                         det("dog", box=at(62, 50, w=60))])
    # the official wording when nothing relates: an empty relation list, so two spaces
    assert not correct and reason == "expected dog right of target, found  target"


def test_margin_shrinks_the_offset_before_normalising():
    # 30 right, 12 down with 60 px tall boxes: dy shrinks to 0, so "below" is lost but "right of" stays
    assert relative_position(at(80, 62, h=60), at(50, 50, h=60)) == {"right of"}
    assert relative_position(at(80, 62), at(50, 50)) == {"right of"}  # dy = 2/32.3 without the margin too
    # 20 right, 30 down: the 2 px margin per axis leaves dx = 18 / 36.1 < 0.5
    assert relative_position(at(70, 80), at(50, 50)) == {"below"}
    assert relative_position(at(70, 75), at(50, 50)) == {"right of", "below"}


def test_position_must_hold_for_every_pair():
    meta = {"tag": "position", "include": [{"class": "cup", "count": 1},
                                           {"class": "apple", "count": 2, "position": ["left of", 0]}], "prompt": "p"}
    left, right = det("apple", box=at(10, 50)), det("apple", 0.9, box=at(90, 50))
    assert not score_image(meta, [det("cup", box=at(50, 50)), left, right])[0]
    assert score_image(meta, [det("cup", box=at(50, 50)), left, dict(left, score=0.9)])[0]


def test_position_only_after_class_and_colour_pass():
    meta = {"tag": "position", "include": [{"class": "cup", "count": 1},
                                           {"class": "dog", "count": 1, "color": "red", "position": ["left of", 0]}],
            "prompt": "p"}
    correct, reason = score_image(meta, [det("cup", box=at(50, 50)), det("dog", box=at(90, 50), color="blue")])
    assert not correct and reason == "expected red dog>=1, found 0 red; and 1 blue"  # no position complaint


def test_position_without_target():
    correct, reason = score_image(position("left of"), [det("dog")])
    assert not correct and reason == "expected cup>=1, found 0\nno target for dog to be left of"


# --- summary ----------------------------------------------------------------------------------------

def test_summary_averages_tasks_not_images():
    results = [{"tag": "single_object", "correct": c} for c in (True, False)]
    results += [{"tag": "counting", "correct": c} for c in (True, True, True, False)]
    assert summarize(results) == {"single_object": 0.5, "counting": 0.75, "overall": 0.625}
    with pytest.raises(ValueError):
        summarize([])


def official_summary(path):
    """GenEval's evaluation/summary_scores.py restated without pandas: read results.jsonl; % correct images =
    mean of `correct`; prompts = groups of equal `metadata` strings, a prompt correct when ANY of its images
    is (`groupby('metadata')['correct'].any()`); task scores by `tag` in order of appearance
    (`groupby('tag', sort=False)`), overall = their mean."""
    df = [json.loads(line) for line in path.read_text().splitlines()]
    by_prompt, by_tag = {}, {}
    for r in df:
        by_prompt[r["metadata"]] = by_prompt.get(r["metadata"], False) or r["correct"]
        by_tag.setdefault(r["tag"], []).append(r["correct"])
    tasks = {tag: sum(v) / len(v) for tag, v in by_tag.items()}
    return {"images": len(df), "prompts": len(by_prompt), "correct_images": sum(r["correct"] for r in df) / len(df),
            "correct_prompts": sum(by_prompt.values()) / len(by_prompt),
            "tasks": tasks, "overall": sum(tasks.values()) / len(tasks)}


def test_results_jsonl_feeds_the_official_summary(tmp_path):
    rng = random.Random(0)
    metas = [SINGLE, THREE_CATS, RED_CAR, dict(SINGLE, prompt="a photo of a dog, again")]
    results = []
    for k, meta in enumerate(metas):
        for i in range(4):
            n = rng.randint(0, 4)
            dets = [det(meta["include"][0]["class"], rng.choice([0.5, 0.95]), color=rng.choice(["red", "blue"]))
                    for _ in range(n)]
            results.append(image_result(f"{k:05d}/samples/{i:04d}.png", meta, dets))
    path = write_results_jsonl(tmp_path / "results.jsonl", results)
    official = official_summary(path)
    ours = summary_counts(results)
    assert ours == pytest.approx({k: official[k] for k in ("images", "prompts", "correct_images", "correct_prompts")})
    scores = summarize(results)
    assert scores["overall"] == pytest.approx(official["overall"])
    assert {k: v for k, v in scores.items() if k != "overall"} == pytest.approx(official["tasks"])
    assert ours["prompts"] == 4  # the two dog prompts differ in text, so in metadata


def test_correct_prompts_count_a_prompt_with_any_correct_image():
    meta = json.dumps(SINGLE)
    results = [{"metadata": meta, "correct": c} for c in (False, False, True, False)]
    results += [{"metadata": json.dumps(RED_CAR), "correct": False}] * 4
    assert summary_counts(results) == {"images": 8, "prompts": 2, "correct_images": 0.125, "correct_prompts": 0.5}


def test_image_result_has_the_official_fields():
    dets = [det("car", 0.5, box=(1, 2, 3, 4), color="red"), det("dog", 0.2), det("car", 0.9, box=(5, 6, 7, 8)),
            det("person", 0.8, box=(0, 0, 1, 1))]
    record = image_result("00000/samples/0000.png", RED_CAR, dets, lambda found, cls: ["blue"] * len(found))
    assert list(record) == ["filename", "tag", "prompt", "correct", "reason", "metadata", "details"]
    assert record["correct"] is False and record["reason"] == "expected red car>=1, found 0 red; and 1 blue"
    assert json.loads(record["metadata"]) == RED_CAR
    # kept detections (score > 0.3), best first, classes in COCO order, boxes as [x0, y0, x1, y1, score]
    assert record["details"] == json.dumps({"person": [[0.0, 0.0, 1.0, 1.0, 0.8]],
                                            "car": [[5.0, 6.0, 7.0, 8.0, 0.9], [1.0, 2.0, 3.0, 4.0, 0.5]]})
