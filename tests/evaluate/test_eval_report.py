"""report.md and the headline row say what GenEval's and DPG-Bench's official summaries say, and how."""

from dmdr_cli.evaluate.benches import OFFICIAL_DPG, dpg_arithmetic
from dmdr_cli.evaluate.report import headline, write_report


def real_report(tmp_path):
    return {
        "subject": {"label": "m", "steps": 4, "nfe": 4},
        "benches": {
            "geneval": {"prompt_set": "official file meta.jsonl", "scores": {"single_object": 0.75, "overall": 0.75},
                        "images": 8, "prompts": 2, "correct_images": 0.75, "correct_prompts": 1.0,
                        "results": str(tmp_path / "geneval_results.jsonl")},
            "dpg": {"prompt_set": "DPG-Bench CSV c.csv", "scores": {"overall": 55.0, "entity": 100.0}, "prompts": 1,
                    "dropped": ["a"], "arithmetic": OFFICIAL_DPG, "answers": str(tmp_path / "dpg_answers.jsonl")},
        },
    }


def test_headline_has_genevals_second_figure(tmp_path):
    row = headline(real_report(tmp_path))
    assert row["GenEval"] == 0.75 and row["GenEval correct prompts"] == 1.0 and row["DPG"] == 55.0


def test_markdown_names_the_summary_the_arithmetic_and_the_files(tmp_path):
    write_report(tmp_path / "r", real_report(tmp_path))
    text = (tmp_path / "r" / "report.md").read_text()
    assert "Correct images: 75.00% of 8; correct prompts (at least one correct image" in text
    assert f"Arithmetic: {OFFICIAL_DPG}; 1 prompts scored, 1 dropped as the official script drops them." in text
    assert "`geneval_results.jsonl`" in text and "`dpg_answers.jsonl`" in text


def test_dpg_arithmetic_says_when_it_is_not_official():
    assert dpg_arithmetic(False, False) == OFFICIAL_DPG
    assert dpg_arithmetic(True, False).startswith("NOT official: every CSV row asked (--dpg-all-rows)")
    assert "--dpg-lenient-yes" in dpg_arithmetic(False, True)
