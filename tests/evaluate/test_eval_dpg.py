import csv
import random
import re
from collections import defaultdict

import numpy as np
import pytest
from PIL import Image

from dmdr_cli.errors import DmdrError
from dmdr_cli.evaluate.dpg import (
    evaluate_dpg, grid_image_paths, is_yes, load_dpg_csv, make_grid, mask_dependencies, split_grid,
)
from dmdr_cli.evaluate.dpg_vqa import TransformersVQA, load_transformers_vqa

HEADER = ("item_id,text,keywords,proposition_id,dependency,category_broad,category_detailed,tuple,"
          "question_natural_language")
ROWS = [
    'a,a red bike by a tree,k,1,0,entity,whole,entity - whole (bike),Is there a bike?',
    'a,a red bike by a tree,k,2,1,attribute,color,"attribute - color (bike, red)",Is the bike red?',
    'a,a red bike by a tree,k,3,0,entity,whole,entity - whole (tree),Is there a tree?',
    'a,a red bike by a tree,k,4,"1,3",relation,spatial,"relation - spatial (bike, tree, next to)",'
    'Is the bike next to the tree?',
    'b,a black cat on a mat,k,1,0,entity,whole,entity - whole (cat),Is there a cat?',
    'b,a black cat on a mat,k,2,1,attribute,color,"attribute - color (cat, black)",Is the cat black?',
    'b,a black cat on a mat,k,3,2,relation,spatial,"relation - spatial (cat, mat, on)",Is the cat on the mat?',
    'b,a black cat on a mat,k,4,0,global,,global - (photo),Is this a photo?',
    'b,a black cat on a mat,k,5,1,other,count,"other - count (cat, ==1)",Is there one cat?',
]

# Answers per tile (top-left, top-right, bottom-left, bottom-right), per question in CSV order.
ANSWERS = {
    "a": [["yes", "yes", "yes", "yes"],      # 4/4 = 1
          ["no", "yes", "yes", "yes"],       # 2 and 4 masked by 1: 1/4
          ["yes", "no", "no", "yes"],        # 4 masked by 3: 1/4
          ["Yes.", "no", " YES ", "yes, it is"]],  # lenient: 1,0,1,0 = 2/4 (official: 0/4) -> image 0.5
    "b": [["no", "yes", "yes", "yes", "yes"],  # 2 masked by 1, 3 by the masked 2, 5 by 1: 1/5
          ["yes"] * 5,                          # 1
          ["yes", "no", "yes", "no", "yes"],    # 3 masked by 2: 2/5
          ["yes", "yes", "no", "yes", "no"]],   # 3/5                                 -> image 0.55
}


@pytest.fixture
def csv_path(tmp_path):
    path = tmp_path / "dpg_bench.csv"
    path.write_text("\n".join([HEADER] + ROWS) + "\n")
    return path


def tiles(n=4, size=(6, 4)):
    return [Image.new("RGB", size, (k, 10 * k, 0)) for k in range(n)]  # tile k has red value k


def fake_vqa(items):
    questions = {item.item_id: [q.question for q in item.questions] for item in items}
    full = {"a": [r.split(",")[-1] for r in ROWS[:4]], "b": [r.split(",")[-1] for r in ROWS[4:]]}

    def answer(image, question):
        tile = image.getpixel((0, 0))[0]
        for item_id, qs in questions.items():
            if question in qs:
                return ANSWERS[item_id][tile][full[item_id].index(question)]
        raise AssertionError(question)
    return answer


def grids(items):
    return {item.item_id: make_grid(tiles()) for item in items}


def test_loader_groups_by_item_in_csv_order(csv_path):
    a, b = load_dpg_csv(csv_path, all_rows=True)
    assert (a.item_id, a.prompt, b.item_id) == ("a", "a red bike by a tree", "b")
    assert [q.proposition_id for q in a.questions] == [1, 2, 3, 4]
    assert [q.parents for q in a.questions] == [(), (1,), (), (1, 3)]
    assert a.questions[1].category == "attribute - color" and a.questions[1].broad_category == "attribute"
    assert b.questions[3].category == "global -" and b.questions[3].broad_category == "global"


def test_masking_propagates_in_csv_order(csv_path):
    _, b = load_dpg_csv(csv_path)
    assert mask_dependencies(b, {1: 1, 2: 0, 3: 1, 4: 1, 5: 1}) == {1: 1, 2: 0, 3: 0, 4: 1, 5: 1}
    assert mask_dependencies(b, {1: 0, 2: 1, 3: 1, 4: 1, 5: 1}) == {1: 0, 2: 0, 3: 0, 4: 1, 5: 0}


def test_scores_by_hand_with_the_corrected_arithmetic(csv_path):
    items = load_dpg_csv(csv_path, all_rows=True)
    report = evaluate_dpg(items, grids(items), fake_vqa(items), lenient_yes=True)
    assert report.per_item == pytest.approx({"a": 0.5, "b": 0.55})
    assert report.score == pytest.approx(52.5)
    assert report.n_prompts == 2 and report.dropped == []
    # last tile, unmasked: a = 1,0,1,0 and b = 1,1,0,1,0
    assert report.categories == pytest.approx({"entity": 100.0, "attribute": 50.0, "relation": 0.0,
                                               "global": 100.0, "other": 0.0})
    assert report.subcategories["attribute - color"] == pytest.approx(50.0)
    # exact "yes" only: a's last tile scores 0/4, so a = (1 + 1/4 + 1/4 + 0) / 4
    strict = evaluate_dpg(items, grids(items), fake_vqa(items))
    assert strict.per_item == pytest.approx({"a": 0.375, "b": 0.55})


def test_default_skips_the_first_row_and_loses_its_dependants(csv_path):
    items = load_dpg_csv(csv_path)
    assert [q.proposition_id for q in items[0].questions] == [2, 3, 4]
    report = evaluate_dpg(items, grids(items), fake_vqa(items))
    # a's question 2 depends on the skipped proposition 1: the official script errors on that image and
    # leaves it out of every mean
    assert report.dropped == ["a"] and report.per_item == pytest.approx({"b": 0.55})
    assert report.score == pytest.approx(55.0)
    assert report.categories == pytest.approx({"entity": 100.0, "attribute": 100.0, "relation": 0.0,
                                               "global": 100.0, "other": 0.0})


def official_dpg(csv_file, answer_of, tiles=4):
    """ELLA's dpg_bench/compute_dpg_bench.py restated (prepare_dpg_data, compute_dpg_one_sample, main):
    pandas row 0 skipped, a new dict whenever item_id changes from the previous row, exact "yes", masking
    in CSV order on the running scores, an image dropped on any error, categories from the last tile's
    unmasked scores, L1 category = the detailed one up to "-". answer_of(item_id, tile, question) -> str."""
    with open(csv_file, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    questions, previous = {}, None
    for i, row in enumerate(rows):
        if i == 0:
            continue
        item, qid = row["item_id"], int(row["proposition_id"])
        deps = [int(d.strip()) for d in row["dependency"].split(",")]
        if item != previous:
            questions[item] = {"tuple": {}, "dependency": {}, "question": {}}
        questions[item]["tuple"][qid] = row["tuple"]
        questions[item]["dependency"][qid] = deps
        questions[item]["question"][qid] = row["question_natural_language"]
        previous = item
    scores, per_category = [], defaultdict(list)
    for item, value in questions.items():
        try:
            qid2scores, tile_scores = {}, []
            for tile in range(tiles):
                for qid, question in value["question"].items():
                    qid2scores[qid] = float(answer_of(item, tile, question) == "yes")
                original = dict(qid2scores)
                for qid, parents in value["dependency"].items():
                    for parent in parents:
                        if parent == 0:
                            continue
                        if qid2scores[parent] == 0:
                            qid2scores[qid] = 0
                            break
                tile_scores.append(sum(qid2scores.values()) / len(qid2scores))
            scores.append(sum(tile_scores) / len(tile_scores))
            for qid, tuple_text in value["tuple"].items():
                per_category[tuple_text.split("(")[0].strip()].append(original[qid])
        except KeyError:
            continue
    l1 = defaultdict(list)
    for category, values in per_category.items():
        l1[category.split("-")[0].strip()].extend(values)
    return 100 * np.mean(scores), {c: 100 * np.mean(v) for c, v in l1.items()}, len(scores)


def random_bench(tmp_path, seed, n_items=12):
    """A DPG-style CSV whose first item's later questions may or may not depend on its first, and answers
    mixing "yes", "no" and the near-misses only lenient matching accepts."""
    rng = random.Random(seed)
    kinds = ["entity - whole", "attribute - color", "relation - spatial", "global -", "other - count"]
    lines, answers = [HEADER], {}
    for n in range(n_items):
        for pid in range(1, rng.randint(2, 7) + 1):
            deps = sorted(rng.sample(range(1, pid), k=min(pid - 1, rng.randint(0, 2)))) or [0]
            question = f"Q{n}.{pid}?"
            lines.append(f'i{n},prompt {n},k,{pid},"{",".join(map(str, deps))}",c,d,{rng.choice(kinds)} (x),{question}')
            for tile in range(4):
                answers[f"i{n}", tile, question] = rng.choice(["yes", "yes", "no", "Yes.", " yes"])
    path = tmp_path / f"bench{seed}.csv"
    path.write_text("\n".join(lines) + "\n")
    return path, answers


@pytest.mark.parametrize("seed", range(6))
def test_default_is_the_official_arithmetic(tmp_path, seed):
    path, answers = random_bench(tmp_path, seed)
    expected, expected_categories, n_scored = official_dpg(path, lambda i, t, q: answers[i, t, q])
    items = load_dpg_csv(path)
    by_question = {q.question: item.item_id for item in items for q in item.questions}
    report = evaluate_dpg(items, grids(items), lambda image, q: answers[by_question[q], image.getpixel((0, 0))[0], q])
    assert report.score == pytest.approx(expected) and report.n_prompts == n_scored
    assert report.categories == pytest.approx(expected_categories)


def test_answers_are_recorded_per_question_and_tile(csv_path):
    items = load_dpg_csv(csv_path, all_rows=True)
    report = evaluate_dpg(items, grids(items), fake_vqa(items))
    assert len(report.answers) == 4 * (4 + 5)
    last = [a for a in report.answers if a["item_id"] == "a" and a["tile"] == 3]
    assert [(a["proposition_id"], a["answer"], a["yes"]) for a in last] == [
        (1, "Yes.", 0.0), (2, "no", 0.0), (3, " YES ", 0.0), (4, "yes, it is", 0.0)]
    assert report.answers[4] == {"item_id": "a", "tile": 1, "proposition_id": 1, "question": "Is there a bike?",
                                 "answer": "no", "yes": 0.0, "masked": 0.0}


def test_grid_round_trip_and_order():
    parts = tiles()
    grid = make_grid(parts)
    assert grid.size == (12, 8)
    assert [t.getpixel((0, 0))[0] for t in split_grid(grid)] == [0, 1, 2, 3]  # TL, TR, BL, BR
    assert all(a.tobytes() == b.tobytes() for a, b in zip(split_grid(grid), parts))
    assert [t.size for t in split_grid(make_grid(tiles(6), rows=2, cols=3), rows=2, cols=3)] == [(6, 4)] * 6
    with pytest.raises(DmdrError, match="does not split into 2x2"):
        split_grid(Image.new("RGB", (13, 8)))
    with pytest.raises(ValueError, match="needs 4 images"):
        make_grid(parts[:3])


@pytest.mark.parametrize("answer, yes", [
    ("yes", True), ("Yes", True), (" yes\n", True), ("YES.", True),
    ("no", False), ("yes, there is", False), ("yeah", False), ("", False), ("yes!", False),
])
def test_answer_matching_is_exact_unless_lenient(answer, yes):
    assert is_yes(answer, lenient=True) is yes
    assert is_yes(answer) is (answer == "yes")


@pytest.mark.parametrize("rows, message", [
    ([], "has no question rows"),
    (['a,t,k,one,0,e,w,entity - whole (x),Q?'], "line 2: proposition_id 'one' is not an integer"),
    (['a,t,k,1,0,e,w,entity - whole (x),Q?', 'a,t,k,2,"1,x",e,w,entity - whole (y),Q2?'],
     "line 3: dependency 'x' is not an integer"),
    (['a,t,k,1,2,e,w,entity - whole (x),Q?'], "line 2: item 'a' proposition 1 depends on 2, which the item lacks"),
    (['a,t,k,1,0,e,w,entity - whole (x),Q?', 'a,t,k,1,0,e,w,entity - whole (x),Q?'],
     "line 3: item 'a' repeats proposition 1 (first at line 2)"),
    (['a,t,k,1,0,e,w,,Q?'], "line 2: item_id, tuple and question_natural_language must be non-empty"),
    (['a,t,k,1,0'], "line 2: has fewer fields than the header"),
])
def test_malformed_csv_names_the_line(tmp_path, rows, message):
    path = tmp_path / "bad.csv"
    path.write_text("\n".join([HEADER] + rows) + "\n")
    with pytest.raises(DmdrError, match=re.escape(message)):
        load_dpg_csv(path, all_rows=True)


def test_missing_csv_and_columns(tmp_path):
    with pytest.raises(DmdrError, match="not shipped with dmdr"):
        load_dpg_csv(tmp_path / "dpg_bench.csv")
    path = tmp_path / "cols.csv"
    path.write_text("item_id,text\na,b\n")
    with pytest.raises(DmdrError, match=r"lacks column\(s\) \['proposition_id'"):
        load_dpg_csv(path)


def test_image_folder(tmp_path, csv_path):
    items = load_dpg_csv(csv_path, all_rows=True)
    make_grid(tiles()).save(tmp_path / "a.png")
    with pytest.raises(DmdrError, match="lacks 1 of 2 grid images \\(first: b\\)"):
        grid_image_paths(tmp_path, items)
    make_grid(tiles()).save(tmp_path / "b.png")
    report = evaluate_dpg(items, grid_image_paths(tmp_path, items), fake_vqa(items), lenient_yes=True)
    assert report.score == pytest.approx(52.5)


def test_transformers_vqa_adapter_with_a_fake_pipeline(tmp_path):
    seen = {}

    def pipe(text, max_new_tokens, return_full_text):
        seen.update(messages=text, max_new_tokens=max_new_tokens, full=return_full_text)
        return [{"generated_text": " Yes."}]

    image = Image.new("RGB", (4, 4))
    answer = TransformersVQA(pipe)
    assert is_yes(answer(image, "Is there a cat?"), lenient=True)
    (message,) = seen["messages"]
    assert message["content"] == [{"type": "image", "image": image},
                                  {"type": "text", "text": "Is there a cat? Answer with yes or no."}]
    assert seen["full"] is False
    TransformersVQA(pipe, instruction="")(image, "Is there a cat?")
    assert seen["messages"][0]["content"][1]["text"] == "Is there a cat?"
    with pytest.raises(DmdrError, match="VQA model folder .* does not exist"):
        load_transformers_vqa(tmp_path / "no-model")
