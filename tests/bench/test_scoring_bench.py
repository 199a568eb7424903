"""bench/scoring.py: its solaris comparison agrees with solaris on a tiny case, and the stacked-polygons case."""

from __future__ import annotations

from conftest import shared_path

from bench import scoring


def test_solaris_part_agrees_on_totals():
    """The --solaris path on 4 images: bdcore and solaris give the same TP/FP/FN per image (asserted inside)."""
    solaris = shared_path("..", "bench", "solaris_eval")  # skips without ../shared
    result = scoring.solaris_bench(images=4, buildings=12, seed=3, repeat=1, solaris_dir=solaris)
    assert result["agree_per_image"] and result["truth_buildings"] == 48
    assert result["tp"] + result["fn"] == 48 and result["tp"] + result["fp"] == result["proposals"]
    assert min(result["tp"], result["fp"], result["fn"]) > 0  # a case where all three counts matter
    assert result["solaris_s"] > 0 and result["bdcore_s"] > 0 and result["speedup_cpu"] > 0


def test_solaris_part_says_when_it_is_skipped(tmp_path):
    assert "not found" in scoring.solaris_bench(solaris_dir=tmp_path / "nowhere")["skipped"]


def test_overlap_case_scores_every_stacked_polygon(tmp_path):
    truth_csv, prop_csv = scoring.overlap_csvs(25, tmp_path)
    _, _, per_image = scoring.score_csvs_bdcore(truth_csv, prop_csv)
    assert per_image == {"AOI_9_Overlap_img1": (25, 0, 0)}
