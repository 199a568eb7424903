"""bench/outlines.py on the two Vegas tiles in tests/data and a one-tile demo, rendered by bench/run_all."""

from __future__ import annotations

import json

from conftest import TEST_DATA

from bench import outlines, run_all


def test_outlines_bench_measures_every_choice_and_the_report_names_the_default(capsys):
    assert outlines.main(["--vegas", str(TEST_DATA / "spacenet2_vegas"), "--demo-tiles", "1"]) == 0
    res = json.loads(capsys.readouterr().out)
    rows = {(r["set"].split()[0], r["condition"], r["outline"]): r for r in res["results"]}
    assert len(rows) == 2 * 2 * 3 and res["default"] == "orthogonal"
    assert res["mean_f1"][res["best"]] == max(res["mean_f1"].values())
    for s in ("vegas", "demo"):
        clean = [rows[s, "clean", o] for o in ("none", "simplify", "orthogonal")]
        assert clean[0]["f1"] == clean[1]["f1"] == clean[2]["f1"] > 0.95  # the exact truth, however outlined
        noisy = [rows[s, "model-like", o] for o in ("none", "simplify", "orthogonal")]
        assert noisy[0]["vertices_per_building"] > noisy[1]["vertices_per_building"] > 4 * noisy[2][
            "vertices_per_building"]
    report = {"benchmarks": {"outlines": {"status": "ok", "result": res}}}
    [row] = run_all.summary_rows(report)
    assert row[0].startswith("building outlines") and f"best **{res['best']}**" in row[1]
    md = "\n".join(run_all.details(report))
    assert "### Building outlines" in md and md.count("| model-like |") == 6
