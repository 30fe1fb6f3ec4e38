import json

import pytest
from PIL import Image

from dmdr_cli.errors import DmdrError
from dmdr_cli.evaluate.geneval_folder import (
    evaluate_folder, prompt_folder, read_prompt_folders, sample_path, save_samples, write_prompt_folders,
)
from dmdr_cli.evaluate.geneval_prompts import Vocabulary
from dmdr_cli.evaluate.geneval_score import summarize

RECORDS = [
    {"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a photo of a dog"},
    {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}], "prompt": "a photo of a red car"},
]


def solid(rgb):
    return Image.new("RGB", (16, 16), rgb)


def test_layout_paths(tmp_path):
    assert prompt_folder(tmp_path, 7) == tmp_path / "00007"
    assert sample_path(tmp_path, 7, 3) == tmp_path / "00007" / "samples" / "0003.png"


def test_write_then_read(tmp_path):
    write_prompt_folders(tmp_path, RECORDS)
    assert json.loads((tmp_path / "00001" / "metadata.jsonl").read_text()) == RECORDS[1]
    save_samples(tmp_path, 0, [solid((0, 0, 0))] * 2)
    (tmp_path / "00000" / "samples" / "notes.png").write_bytes(b"")  # not <digits>.png: ignored
    (tmp_path / "scratch").mkdir()  # not a digit folder: ignored
    entries = read_prompt_folders(tmp_path)
    assert [e.index for e in entries] == [0, 1]
    assert [e.metadata for e in entries] == RECORDS
    assert [p.name for p in entries[0].samples] == ["0000.png", "0001.png"] and entries[1].samples == ()


def test_evaluate_folder_with_fake_detector(tmp_path):
    write_prompt_folders(tmp_path, RECORDS)
    save_samples(tmp_path, 0, [solid((200, 0, 0)), solid((0, 0, 200))])
    save_samples(tmp_path, 1, [solid((200, 0, 0)), solid((0, 0, 200))])

    def detect(image):  # a dog and a car in every image
        return [{"class": "dog", "score": 0.9, "box": (0, 0, 8, 8)},
                {"class": "car", "score": 0.9, "box": (8, 8, 16, 16)}]

    def colors_for(image):  # the car takes the image's colour
        return lambda dets, cls: ["red" if image.getpixel((0, 0))[0] > 100 else "blue" for _ in dets]

    results = evaluate_folder(tmp_path, detect, colors_for)
    assert [(r["tag"], r["correct"]) for r in results] == [
        ("single_object", True), ("single_object", True), ("colors", True), ("colors", False)]
    assert results[3]["reason"] == "expected red car>=1, found 0 red; and 1 blue"
    assert summarize(results) == {"single_object": 1.0, "colors": 0.5, "overall": 0.75}


def test_folder_errors(tmp_path):
    with pytest.raises(DmdrError, match="does not exist"):
        read_prompt_folders(tmp_path / "missing")
    with pytest.raises(DmdrError, match="no prompt folders"):
        read_prompt_folders(tmp_path)
    write_prompt_folders(tmp_path, RECORDS[:1])
    with pytest.raises(DmdrError, match="has no samples"):
        evaluate_folder(tmp_path, lambda image: [])
    (tmp_path / "00000" / "metadata.jsonl").write_text('{"tag": "single_object"}')
    with pytest.raises(DmdrError, match=r"00000.metadata\.jsonl: prompt must be a non-empty string"):
        read_prompt_folders(tmp_path)


def test_other_vocabularies_in_geneval_format(tmp_path):
    shapes = Vocabulary(classes=("circle", "square"), colors=("red", "cyan"))
    record = {"tag": "colors", "include": [{"class": "circle", "count": 1, "color": "cyan"}], "prompt": "p"}
    write_prompt_folders(tmp_path, [record])
    with pytest.raises(DmdrError, match="'circle' is not one of the 80 known classes"):
        read_prompt_folders(tmp_path)
    save_samples(tmp_path, 0, [solid((0, 200, 200))])
    detect = lambda image: [{"class": "circle", "score": 1.0, "box": (0, 0, 4, 4), "color": "red"}]  # noqa: E731
    (result,) = evaluate_folder(tmp_path, detect, vocabulary=shapes)
    assert result["reason"] == "expected cyan circle>=1, found 0 cyan; and 1 red"
