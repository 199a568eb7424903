"""bench/run_all's report rows for map_render's 'every building' cases (the benchmark itself needs Chromium)."""

from __future__ import annotations

from bench import run_all


def test_map_render_report_has_the_buildings_rows():
    case = {"synthetic": True, "tiles": 1148, "cold_s": 2.1, "max_drawn": 50000}
    result = {"tiles": 1148, "build_s": 0.09, "browser_s": 0.3,
              "buildings": {**case, "buildings": 25256, "mode": "outlines", "features_drawn": 25256,
                            "server_s": 0.36, "browser_s": 0.87},
              "fallback": {**case, "buildings": 150388, "mode": "density", "features_drawn": 2280,
                           "server_s": 0.26, "browser_s": 2.4}}
    rows = run_all.summary_rows({"benchmarks": {"map_render": {"status": "ok", "result": result}}})
    mine = [r for r in rows if "every building" in r[0]]
    assert [r[3] for r in mine] == ["yes", "**no**"]  # the fallback's browser time is over its 2 s goal
    assert "25,256 synthetic buildings on 1,148 tiles drawn as outlines" in mine[0][0]
    assert "density grid (2,280 cells; budget 50,000)" in mine[1][0] and "**0.26 s** / **2.4 s**" in mine[1][1]
