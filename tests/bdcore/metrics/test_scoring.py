"""SpaceNet building F1 (against solaris' golden CSVs and hand-made cases) and pixel metrics."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pandas as pd
import pytest
import shapely
from shapely.geometry import Polygon, box

from bdcore.cli import metrics as cli_metrics
from bdcore.metrics.scoring import (
    PER_AOI_COLUMNS,
    PER_IMAGE_COLUMNS,
    PixelCounts,
    ScoringError,
    TileScore,
    _match_arrays,
    _rectangles,
    match_buildings,
    pixel_metrics,
    precision_recall_f1,
    read_spacenet_csv,
    score_spacenet,
    write_spacenet_csv,
)


def assert_frames_close(got: pd.DataFrame, want: pd.DataFrame, tol: float = 1e-9) -> None:
    assert list(got.columns) == list(want.columns)
    assert got.shape == want.shape
    for col in want.columns:
        g, w = got[col].to_numpy(), want[col].to_numpy()
        if np.issubdtype(np.asarray(w).dtype, np.number):
            np.testing.assert_allclose(g.astype(float), w.astype(float), rtol=0, atol=tol, err_msg=col)
        else:
            assert [str(x) for x in g] == [str(x) for x in w], col


@pytest.fixture(scope="module")
def golden(scoring_dir):
    truth = read_spacenet_csv(scoring_dir / "SN2_sample_truth.csv")
    props = read_spacenet_csv(scoring_dir / "SN2_sample_preds.csv")
    return truth, props


# --------------------------------------------------------------------------- golden files


def test_per_aoi_matches_golden(golden, scoring_dir):
    per_aoi, _ = score_spacenet(*golden)
    want = pd.read_csv(scoring_dir / "SN2_test_results.csv")
    assert list(per_aoi.index) == ["AOI_2_Vegas", "AOI_5_Khartoum"]
    assert list(per_aoi.columns) == PER_AOI_COLUMNS
    assert_frames_close(per_aoi.reset_index(drop=True), want)


def test_per_image_matches_golden(golden, scoring_dir):
    _, per_image = score_spacenet(*golden)
    # the reference scorer orders images by a Python set (random); ours is sorted by imageID
    want = pd.read_csv(scoring_dir / "SN2_test_results_full.csv").sort_values("imageID").reset_index(drop=True)
    assert list(per_image.columns) == PER_IMAGE_COLUMNS
    assert list(per_image["imageID"]) == sorted(per_image["imageID"])
    assert_frames_close(per_image, want)
    # the all-empty image (POLYGON EMPTY in both files) scores zeros, not NaN
    row = per_image.set_index("imageID").loc["AOI_5_Khartoum_img463"]
    assert (row["TruePos"], row["FalsePos"], row["FalseNeg"], row["F1Score"]) == (0, 0, 0, 0.0)


def test_score_accepts_paths_and_is_order_independent(golden, scoring_dir):
    truth, props = golden
    shuffled = props.sample(frac=1.0, random_state=3)  # file order must not matter, only Confidence
    a1, i1 = score_spacenet(truth, shuffled)
    a2, i2 = score_spacenet(scoring_dir / "SN2_sample_truth.csv", scoring_dir / "SN2_sample_preds.csv")
    assert_frames_close(a1, a2)
    assert_frames_close(i1, i2)


def run_score_cli(argv: list[str]) -> int:
    """The ``score`` sub-command as ``python -m bdcore`` wires it (only this module's parser, so another
    module's import problem cannot mask a scoring failure)."""
    parser = argparse.ArgumentParser()
    cli_metrics.register_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_score_writes_both_csvs(scoring_dir, tmp_path, capsys):
    rc = run_score_cli(["score", "--truth", str(scoring_dir / "SN2_sample_truth.csv"),
                   "--proposals", str(scoring_dir / "SN2_sample_preds.csv"), "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "AOI_2_Vegas" in out and "AOI_5_Khartoum" in out and "0.8861" in out
    assert_frames_close(pd.read_csv(tmp_path / "results.csv"), pd.read_csv(scoring_dir / "SN2_test_results.csv"))
    full = pd.read_csv(tmp_path / "results_full.csv")
    want = pd.read_csv(scoring_dir / "SN2_test_results_full.csv").sort_values("imageID").reset_index(drop=True)
    assert_frames_close(full, want)


def test_cli_bad_wkt_raises_domain_error(tmp_path):
    # bdcore.cli prints a ValueError as one line with exit status 2
    bad = tmp_path / "bad.csv"
    bad.write_text("ImageId,BuildingId,PolygonWKT_Pix,Confidence\nAOI_2_Vegas_img1,0,\"POLYGON ((0 0, 1 1\",1\n")
    with pytest.raises(ValueError, match=r"bad\.csv: row 2"):
        run_score_cli(["score", "--truth", str(bad), "--proposals", str(bad)])


# --------------------------------------------------------------------------- hand-made matching cases


def test_iou_exactly_half_does_not_match():
    truth = [box(0, 0, 10, 10)]
    half = match_buildings(truth, [box(0, 0, 10, 5)])  # IoU = 50/100 exactly
    assert (half["tp"], half["fp"], half["fn"]) == (0, 1, 1)
    assert half["f1"] == 0.0 and not math.isnan(half["f1"])
    above = match_buildings(truth, [box(0, 0, 10, 5.1)])
    assert (above["tp"], above["fp"], above["fn"]) == (1, 0, 0)
    assert above["matches"] == [(0, 0, pytest.approx(0.51))]


def test_greedy_order_is_by_confidence():
    # Overlapping truths A, B. P1 fits B best (0.905) but also A (0.739); P2 fits only B (0.667).
    a, b = box(0, 0, 10, 10), box(2, 0, 12, 10)
    p1, p2 = box(1.5, 0, 11.5, 10), box(4, 0, 14, 10)
    first_p1 = match_buildings([a, b], [p1, p2], confidences=[0.9, 0.1])
    assert (first_p1["tp"], first_p1["fp"], first_p1["fn"]) == (1, 1, 1)
    assert [(p, t) for p, t, _ in first_p1["matches"]] == [(0, 1)]
    first_p2 = match_buildings([a, b], [p1, p2], confidences=[0.1, 0.9])
    assert (first_p2["tp"], first_p2["fp"], first_p2["fn"]) == (2, 0, 0)
    assert sorted((p, t) for p, t, _ in first_p2["matches"]) == [(0, 0), (1, 1)]
    # without confidences the given order decides
    assert match_buildings([a, b], [p2, p1])["tp"] == 2


def test_each_truth_matched_once():
    truth = [box(0, 0, 10, 10)]
    r = match_buildings(truth, [box(0, 0, 10, 10), box(0, 0, 10, 9.5)], confidences=[0.5, 0.6])
    assert (r["tp"], r["fp"], r["fn"]) == (1, 1, 0)
    assert r["matches"][0][0] == 1  # higher confidence wins even with the lower IoU


def test_small_polygons_ignored_like_solaris():
    # truth kept when area >= 20, proposals kept when area > 20
    assert match_buildings([box(0, 0, 4, 4.75)], [])["fn"] == 0  # 19 px²
    assert match_buildings([box(0, 0, 4, 5)], [])["fn"] == 1  # 20 px²
    assert match_buildings([], [box(0, 0, 4, 5)])["fp"] == 0  # 20 px²
    assert match_buildings([], [box(0, 0, 3, 7)])["fp"] == 1  # 21 px²
    # a small proposal cannot match a small truth polygon either
    r = match_buildings([box(0, 0, 4, 4)], [box(0, 0, 4, 4)])
    assert (r["tp"], r["fp"], r["fn"]) == (0, 0, 0)
    r = match_buildings([box(0, 0, 4, 4)], [box(0, 0, 4, 4)], min_area=0)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 0, 0)


def test_empty_truth_and_empty_proposals():
    none = match_buildings([], [])
    assert (none["tp"], none["fp"], none["fn"], none["f1"], none["precision"], none["recall"]) == (0, 0, 0, 0.0, 0.0, 0.0)
    fp_only = match_buildings([], [box(0, 0, 10, 10), box(20, 20, 30, 30)])
    assert (fp_only["tp"], fp_only["fp"], fp_only["fn"], fp_only["f1"]) == (0, 2, 0, 0.0)
    fn_only = match_buildings([box(0, 0, 10, 10), Polygon()], [])
    assert (fn_only["tp"], fn_only["fp"], fn_only["fn"], fn_only["f1"]) == (0, 0, 1, 0.0)


def test_invalid_proposal_is_repaired_and_invalid_truth_never_matches():
    bowtie = Polygon([(0, 0), (10, 10), (10, 0), (0, 10), (0, 0)])  # self-intersecting
    assert not bowtie.is_valid
    truth = [shapely.make_valid(bowtie)]
    # shapely's area of the raw bowtie is 0, so it falls under min_area like in solaris
    assert match_buildings(truth, [bowtie])["fp"] == 0
    hourglass_truth = Polygon([(0, 0), (20, 0), (0, 20), (20, 20), (0, 0)])
    r = match_buildings([hourglass_truth, box(40, 40, 50, 50)], [box(40, 40, 50, 50)])
    assert (r["tp"], r["fp"]) == (1, 0)


def test_unmatched_indices_are_the_scored_false_positives_and_negatives():
    truth = [box(0, 0, 10, 10), box(30, 0, 40, 10), box(60, 0, 64, 4), Polygon()]  # matched, missed, 16 px², empty
    props = [box(50, 50, 60, 60), box(0, 0, 10, 10), box(80, 0, 84, 5)]  # false alarm, match, 20 px² (not scored)
    r = match_buildings(truth, props, confidences=[0.2, 0.9, 0.5])
    assert (r["tp"], r["fp"], r["fn"]) == (1, 1, 1)
    assert [(p, t) for p, t, _ in r["matches"]] == [(1, 0)]
    assert r["false_positives"] == [0] and r["false_negatives"] == [1]
    assert match_buildings([], [])["false_positives"] == [] == match_buildings([], [])["false_negatives"]


def test_precision_recall_f1_is_the_one_formula():
    assert precision_recall_f1(3, 3, 5) == (0.5, 0.375, 2 * 0.5 * 0.375 / 0.875)
    assert precision_recall_f1(0, 0, 0) == (0.0, 0.0, 0.0) and precision_recall_f1(0, 4, 0) == (0.0, 0.0, 0.0)
    c = PixelCounts(3, 3, 5)
    assert (c.precision, c.recall, c.f1) == precision_recall_f1(3, 3, 5) and c.iou == 3 / 11
    m = match_buildings([box(0, 0, 10, 10), box(20, 0, 30, 10)], [box(0, 0, 10, 10)])
    assert (m["precision"], m["recall"], m["f1"]) == precision_recall_f1(1, 0, 1)


def test_tile_score_row_and_picture_lists():
    truth_mask = np.zeros((40, 40), bool)
    truth_mask[0:10, 0:10] = True
    pred = np.zeros((40, 40), bool)
    pred[0:10, 0:10] = True
    pred[20:30, 20:30] = True
    score = TileScore.of(pred, truth_mask, [box(0, 0, 10, 10)], [(box(20, 20, 30, 30), 0.8), (box(0, 0, 10, 10), 0.9)])
    row = score.row()
    assert (row["tp"], row["fp"], row["fn"], row["n_truth"], row["n_pred"]) == (1, 1, 0, 1, 2)
    assert (row["pixel_tp"], row["pixel_fp"], row["pixel_fn"], row["pixel_iou"]) == (100, 100, 0, 0.5)
    assert score.tp_proposals == [box(0, 0, 10, 10)] and score.fp_proposals == [box(20, 20, 30, 30)]
    assert score.fn_truth == []
    empty = TileScore.of(np.zeros((8, 8), bool), np.zeros((8, 8), bool), [], []).row()  # nothing there, nothing found
    assert (empty["pixel_iou"], empty["pixel_f1"], empty["precision"], empty["recall"], empty["f1"]) == (1.0,) * 5



def test_tile_score_buildings_one_row_per_building_with_its_match():
    """Matched pair: TP on both sides with the pair's IoU (and the proposal's confidence on the truth row); an
    unmatched proposal FP, an unmatched truth FN, a truth under min_area "not scored"."""
    truth = [box(0, 0, 10, 10), box(50, 50, 60, 60), box(80, 80, 82, 82)]  # the last: 4 px² < min_area
    props = [(box(20, 20, 30, 30), 0.8), (box(0, 0, 10, 8), 0.9)]  # IoU of the second with truth 0: 80/100
    score = TileScore.of(np.zeros((90, 90), bool), np.zeros((90, 90), bool), truth, props)
    b = score.buildings()
    assert b[["layer", "index", "status"]].values.tolist() == [
        ["prediction", 0, "FP"], ["prediction", 1, "TP"], ["truth", 0, "TP"], ["truth", 1, "FN"],
        ["truth", 2, "not scored"]]
    assert b["iou"].tolist()[1:3] == [0.8, 0.8] and b["iou"].iloc[[0, 3, 4]].isna().all()
    assert b["confidence"].tolist()[:3] == [0.8, 0.9, 0.9] and b["confidence"].iloc[3:].isna().all()
    assert b["area_px"].tolist() == [100.0, 80.0, 100.0, 100.0, 4.0]
    row = score.row()
    assert (row["tp"], row["fp"], row["fn"]) == (1, 1, 1)

def test_score_spacenet_images_only_in_one_file():
    truth = pd.DataFrame({
        "ImageId": ["AOI_1_X_img1", "AOI_1_X_img2", "AOI_1_X_img3"],
        "BuildingId": [1, 1, -1],
        "PolygonWKT_Pix": [box(0, 0, 10, 10).wkt, box(0, 0, 10, 10).wkt, "POLYGON EMPTY"],
    })
    props = pd.DataFrame({
        "ImageId": ["AOI_1_X_img1", "AOI_1_X_img4"],
        "BuildingId": [0, 0],
        "PolygonWKT_Pix": [box(0, 0, 10, 10).wkt, box(0, 0, 10, 10).wkt],
        "Confidence": [1.0, 1.0],
    })
    per_aoi, per_image = score_spacenet(truth, props)
    got = per_image.set_index("imageID")[["TruePos", "FalsePos", "FalseNeg", "F1Score"]]
    assert got.loc["AOI_1_X_img1"].tolist() == [1, 0, 0, 1.0]
    assert got.loc["AOI_1_X_img2"].tolist() == [0, 0, 1, 0.0]  # truth only
    assert got.loc["AOI_1_X_img3"].tolist() == [0, 0, 0, 0.0]  # empty truth, no proposal
    assert got.loc["AOI_1_X_img4"].tolist() == [0, 1, 0, 0.0]  # proposals only
    assert per_aoi.loc["AOI_1_X", ["TruePos", "FalsePos", "FalseNeg"]].tolist() == [1, 1, 1]
    assert per_aoi.loc["AOI_1_X", "F1Score"] == pytest.approx(0.5)


# --------------------------------------------------------------------------- stacked polygons (issue 13.6)


def _stack(n: int, seed: int, image_id: str = "AOI_9_Stack_img1") -> pd.DataFrame:
    """n identical 40 px squares plus n near-identical ones (jittered < 1 px), random confidences, one image."""
    rng = np.random.default_rng(seed)
    x, y = 100 + rng.uniform(-0.5, 0.5, size=(2, n))
    geoms = [box(100, 100, 140, 140)] * n + [box(a, b, a + 40, b + 40) for a, b in zip(x, y)]
    return pd.DataFrame({"ImageId": image_id, "BuildingId": range(2 * n), "geometry": geoms,
                         "Confidence": rng.random(2 * n)})


def test_stacked_identical_polygons_match_one_to_one_in_small_chunks():
    # 200 identical truth squares, 200 identical proposals: IoU 1 for every pair, and each truth can be matched once,
    # so every proposal takes its own truth: TP 200, FP 0, FN 0; with 150 proposals, 50 truth are left (FN 50).
    sq = box(0, 0, 40, 40)
    truth = np.array([sq] * 200, dtype=object)
    for n_props, want in ((200, (200, 0, 0)), (150, (150, 0, 50)), (260, (200, 60, 0))):
        props = np.array([sq] * n_props, dtype=object)
        conf = np.linspace(1, 0, n_props)
        small = _match_arrays(truth, props, conf, 0.5, 20.0, chunk_pairs=500)  # 2 proposals per chunk
        assert (len(small.matches), len(small.false_positives), len(small.false_negatives)) == want
        assert small == _match_arrays(truth, props, conf, 0.5, 20.0)  # one chunk: same matches, same order
        # greedy by confidence, first free truth on ties: proposal k takes truth k
        assert [(p, t) for p, t, _ in small.matches] == [(k, k) for k in range(want[0])]


def _dense(n: int, seed: int, image_id: str) -> pd.DataFrame:
    """n random overlapping boxes (10-30 px) crowded into 80 x 80 px: many proposals want the same truth."""
    rng = np.random.default_rng(seed)
    x, y = rng.uniform(0, 80, size=(2, n))
    w, h = rng.uniform(10, 30, size=(2, n))
    return pd.DataFrame({"ImageId": image_id, "geometry": [box(*r) for r in zip(x, y, x + w, y + h)],
                         "Confidence": rng.random(n)})


def _naive_counts(truth: list, props: list, conf: np.ndarray) -> tuple[int, int, int]:
    """SpaceNet greedy one pair at a time: by decreasing confidence, the free truth of highest IoU (first on ties)."""
    free, tp = list(range(len(truth))), 0
    for k in np.argsort(-conf, kind="stable"):
        ious = [(truth[j].intersection(props[k]).area / truth[j].union(props[k]).area, -j) for j in free]
        if ious and max(ious)[0] > 0.5:
            free.remove(-max(ious)[1])
            tp += 1
    return tp, len(props) - tp, len(free)


def test_chunked_scores_equal_unchunked_and_a_pair_by_pair_greedy():
    truth = pd.concat([_stack(40, 0), _dense(60, 1, "AOI_9_Dense_img2")], ignore_index=True)
    props = pd.concat([_stack(30, 2), _dense(80, 3, "AOI_9_Dense_img2")], ignore_index=True)
    _, whole = score_spacenet(truth, props)
    _, chunked = score_spacenet(truth, props, chunk_pairs=7)
    pd.testing.assert_frame_equal(chunked, whole)
    got = {r.imageID: (r.TruePos, r.FalsePos, r.FalseNeg) for r in whole.itertuples()}
    assert got["AOI_9_Stack_img1"] == (60, 0, 20)
    t, p = truth[truth.ImageId == "AOI_9_Dense_img2"], props[props.ImageId == "AOI_9_Dense_img2"]
    want = _naive_counts(list(t.geometry), list(p.geometry), p.Confidence.to_numpy())
    assert got["AOI_9_Dense_img2"] == want and 5 < want[0] < 60  # a crowd: some matched, some not


def test_chunks_spanning_several_images_match_each_image_on_its_own():
    # all images are matched in one pass; a chunk (here 3 proposals of 40 an image) may hold the end of one image
    # and the start of the next, and proposals must still only ever meet their own image's truth (same pixels)
    truth = pd.concat([_dense(30, i, f"AOI_9_Dense_img{i}") for i in range(5)], ignore_index=True)
    props = pd.concat([_dense(40, 10 + i, f"AOI_9_Dense_img{i}") for i in range(5)], ignore_index=True)
    _, whole = score_spacenet(truth, props)
    _, chunked = score_spacenet(truth, props, chunk_pairs=90)
    pd.testing.assert_frame_equal(chunked, whole)
    for r in whole.itertuples():
        t, p = truth[truth.ImageId == r.imageID], props[props.ImageId == r.imageID]
        want = _naive_counts(list(t.geometry), list(p.geometry), p.Confidence.to_numpy())
        assert (r.TruePos, r.FalsePos, r.FalseNeg) == want, r.imageID
    assert whole["TruePos"].sum() > 5


def test_rectangle_shortcut_only_for_axis_aligned_rectangles_and_gives_geos_ious():
    from shapely.affinity import rotate

    shapes = [box(0, 0, 10, 5), Polygon([(10, 5), (0, 5), (0, 0), (10, 0)]), rotate(box(0, 0, 10, 5), 10),
              Polygon([(0, 0), (10, 10), (0, 10), (10, 0)]),  # bow-tie on the box's corners
              Polygon([(0, 0), (10, 0), (10, 5), (5, 5), (5, 10), (0, 10)]),  # L shape
              box(0, 0, 10, 10).difference(box(2, 2, 4, 4)), Polygon()]
    geoms = np.array(shapes, dtype=object)
    got = _rectangles(geoms, shapely.area(geoms), shapely.bounds(geoms))
    assert got.tolist() == [True, True, False, False, False, False, False]
    dense_t, dense_p = _dense(40, 5, "x"), _dense(40, 6, "x")
    r = match_buildings(list(dense_t.geometry), list(dense_p.geometry), dense_p.Confidence.tolist())
    assert r["matches"]
    for p, t, iou in r["matches"]:
        a, b = dense_p.geometry.iloc[p], dense_t.geometry.iloc[t]
        assert iou == pytest.approx(a.intersection(b).area / a.union(b).area, rel=1e-12)


def test_too_many_candidate_pairs_is_refused_naming_image_and_limit():
    truth, props = _stack(15, 0), _stack(15, 1)  # 30 x 30 = 900 overlapping pairs
    with pytest.raises(ScoringError, match=r"image 'AOI_9_Stack_img1': 900 overlapping proposal/truth pairs, "
                                           r"more than the limit of 899 .*--max-pairs"):
        score_spacenet(truth, props, max_pairs=899, chunk_pairs=100)
    _, per_image = score_spacenet(truth, props, max_pairs=900)
    assert per_image["TruePos"].tolist() == [30]
    with pytest.raises(ScoringError, match=r"max_pairs \(0\) .* must be at least 1"):
        score_spacenet(truth, props, max_pairs=0)


def test_non_finite_area_proposal_is_a_false_positive_and_truth_is_refused(caplog):
    sq, huge = box(0, 0, 40, 40), shapely.from_wkt("POLYGON ((0 0, 1e308 0, 1e308 1e308, 0 1e308, 0 0))")
    assert not math.isfinite(huge.area)
    truth = pd.DataFrame({"ImageId": ["AOI_1_X_img1"], "geometry": [sq]})
    props = pd.DataFrame({"ImageId": ["AOI_1_X_img1"] * 2, "geometry": [huge, sq], "Confidence": [0.9, 0.5]})
    with caplog.at_level("WARNING", logger="bdcore.metrics.scoring"):
        _, per_image = score_spacenet(truth, props)
    assert per_image[["TruePos", "FalsePos", "FalseNeg"]].values.tolist() == [[1, 1, 0]]
    assert "rows at positions 0: polygon area is not finite" in caplog.text
    assert match_buildings([sq], [huge, sq])["false_positives"] == [0]
    with pytest.raises(ScoringError, match=r"truth rows at positions 1: polygon area is not finite"):
        score_spacenet(pd.DataFrame({"ImageId": ["AOI_1_X_img1"] * 2, "geometry": [sq, huge]}), props)
    with pytest.raises(ScoringError, match="truth polygon 0 has a non-finite area"):
        match_buildings([huge], [sq])


def test_read_csv_strips_image_id_spaces_with_one_warning(tmp_path, caplog):
    p = tmp_path / "props.csv"
    p.write_text("ImageId,BuildingId,PolygonWKT_Pix,Confidence\n"
                 'AOI_2_Vegas_img1,0,"POLYGON ((0 0, 10 0, 10 10, 0 10, 0 0))",1\n'
                 ' AOI_2_Vegas_img1,1,"POLYGON ((0 0, 10 0, 10 10, 0 10, 0 0))",1\n'
                 'AOI_2_Vegas_img1\t,2,"POLYGON ((0 0, 10 0, 10 10, 0 10, 0 0))",1\n')
    with caplog.at_level("WARNING", logger="bdcore.metrics.scoring"):
        df = read_spacenet_csv(p)
    assert df["ImageId"].tolist() == ["AOI_2_Vegas_img1"] * 3
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "stripped spaces around 2 ImageId(s) (first: row 3, ' AOI_2_Vegas_img1')" in \
        warnings[0], warnings


def test_read_csv_not_utf8_names_byte_and_row(tmp_path):
    p = tmp_path / "props.csv"
    p.write_bytes(b"ImageId,BuildingId,PolygonWKT_Pix,Confidence\n"
                  b'AOI_2_Vegas_img1,0,"POLYGON ((0 0, 10 0, 10 10, 0 10, 0 0))",1\n'
                  b'AOI_2_Vegas_caf\xe9_img2,1,"POLYGON ((0 0, 10 0, 10 10, 0 10, 0 0))",1\n')
    with pytest.raises(ScoringError, match=r"props\.csv: not UTF-8 text \(byte 0xe9 at row 3\); save it as UTF-8"):
        read_spacenet_csv(p)


def test_read_csv_non_polygon_row_is_named(tmp_path):
    p = tmp_path / "props.csv"
    p.write_text("ImageId,BuildingId,PolygonWKT_Pix,Confidence\n"
                 'AOI_2_Vegas_img1,0,"POLYGON ((0 0, 10 0, 10 10, 0 10, 0 0))",1\n'
                 'AOI_2_Vegas_img1,1,"LINESTRING (0 0, 10 0)",1\n')
    with pytest.raises(ScoringError, match=r"props\.csv: row 3: PolygonWKT_Pix is a LineString, expected a POLYGON"):
        read_spacenet_csv(p)


# --------------------------------------------------------------------------- CSV io


def test_read_csv_bom_geo_column_and_empty(tmp_path):
    p = tmp_path / "truth.csv"
    p.write_bytes("\ufeffImageId,BuildingId,PolygonWKT_Pix,PolygonWKT_Geo\n"
                  "AOI_2_Vegas_img1,1,\"POLYGON ((0 0 0,10 0 0,10 10 0,0 10 0,0 0 0))\",\"POLYGON ((1 1 0,2 1 0,2 2 0,1 1 0))\"\n"
                  "AOI_2_Vegas_img2,-1,POLYGON EMPTY,POLYGON EMPTY\n".encode("utf-8"))
    df = read_spacenet_csv(p)
    assert list(df["ImageId"]) == ["AOI_2_Vegas_img1", "AOI_2_Vegas_img2"]
    assert df["geometry"].iloc[0].area == 100.0 and not df["geometry"].iloc[0].has_z
    assert df["geometry"].iloc[1].is_empty
    assert list(df["BuildingId"]) == [1, -1]
    assert (df["Confidence"] == 1.0).all()


def test_read_csv_bad_wkt_names_file_and_row(tmp_path):
    p = tmp_path / "props.csv"
    p.write_text("ImageId,BuildingId,PolygonWKT_Pix,Confidence\n"
                 "AOI_2_Vegas_img1,0,\"POLYGON ((0 0, 10 0, 10 10, 0 10, 0 0))\",1\n"
                 "AOI_2_Vegas_img1,1,\"POLYGON ((0 0, 10 0, 10 10\",1\n")
    with pytest.raises(ScoringError, match=r"props\.csv: row 3") as info:
        read_spacenet_csv(p)
    assert isinstance(info.value, ValueError)


def test_read_csv_missing_column_and_bad_confidence(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("ImageId,Wkt\nA_img1,POLYGON EMPTY\n")
    with pytest.raises(ScoringError, match=r"x\.csv: missing column.*PolygonWKT_Pix"):
        read_spacenet_csv(p)
    p.write_text("ImageId,BuildingId,PolygonWKT_Pix,Confidence\nA_img1,0,POLYGON EMPTY,high\n")
    with pytest.raises(ScoringError, match=r"row 2: Confidence 'high'"):
        read_spacenet_csv(p)


def test_write_then_read_roundtrip(tmp_path):
    path = tmp_path / "out" / "props.csv"
    polys = [box(1, 2, 30.5, 40), Polygon([(0, 0), (20, 0), (20, 20), (10, 20), (10, 10), (0, 10)]), Polygon()]
    write_spacenet_csv(path, [("AOI_2_Vegas_img7", i, g, c) for i, (g, c) in enumerate(zip(polys, [0.9, 0.8, 0.1]))])
    assert path.read_text().splitlines()[0] == "ImageId,BuildingId,PolygonWKT_Pix,Confidence"
    assert [p.name for p in path.parent.iterdir()] == ["props.csv"]  # no temp file left behind
    back = read_spacenet_csv(path)
    assert all(a.equals(b) for a, b in zip(back["geometry"], polys[:2]))
    assert back["geometry"].iloc[2].is_empty
    assert back["Confidence"].tolist() == [0.9, 0.8, 0.1]
    write_spacenet_csv(path, back)  # a frame with a geometry column works too
    assert read_spacenet_csv(path)["PolygonWKT_Pix"].tolist() == back["PolygonWKT_Pix"].tolist()


# --------------------------------------------------------------------------- pixel metrics


def test_pixel_metrics_known_values():
    truth = np.zeros((4, 5), bool)
    truth[0:2, 0:4] = True  # 8 px
    pred = np.zeros((4, 5), bool)
    pred[1:3, 0:3] = True  # 6 px, 3 overlap
    m = pixel_metrics(pred, truth)
    assert (m["tp"], m["fp"], m["fn"]) == (3, 3, 5)
    assert m["iou"] == pytest.approx(3 / 11)
    assert m["precision"] == pytest.approx(0.5)
    assert m["recall"] == pytest.approx(3 / 8)
    assert m["f1"] == pytest.approx(2 * 3 / (2 * 3 + 3 + 5))


def test_pixel_counts_accumulate_over_tiles():
    rng = np.random.default_rng(0)
    preds = [rng.random((16, 16)) > 0.5 for _ in range(3)]
    truths = [rng.random((16, 16)) > 0.6 for _ in range(3)]
    total = sum((PixelCounts.from_masks(p, t) for p, t in zip(preds, truths)), PixelCounts())
    assert total == sum(PixelCounts.from_masks(p, t) for p, t in zip(preds, truths))
    whole = pixel_metrics(np.concatenate(preds), np.concatenate(truths))
    assert total.as_dict() == whole
    assert total.tp + total.fp + total.fn + total.tn == 3 * 256


def test_pixel_metrics_edge_cases():
    empty = pixel_metrics(np.zeros((3, 3)), np.zeros((3, 3)))
    assert empty == {"iou": 0.0, "precision": 0.0, "recall": 0.0, "f1": 0.0, "tp": 0, "fp": 0, "fn": 0}
    with pytest.raises(ValueError, match="shape"):
        pixel_metrics(np.zeros((3, 3)), np.zeros((3, 4)))


def test_header_only_proposals_score_every_truth_as_missed(golden, tmp_path):
    truth, _ = golden
    empty = tmp_path / "none.csv"
    write_spacenet_csv(empty, [])
    per_aoi, per_image = score_spacenet(truth, read_spacenet_csv(empty))
    # 172 rows: one POLYGON EMPTY and two buildings under 20 px² do not count
    assert per_image["FalseNeg"].sum() == 169 and per_image["TruePos"].sum() == 0
    assert per_aoi["F1Score"].tolist() == [0.0, 0.0]


def test_missing_csv_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_spacenet_csv(tmp_path / "nope.csv")
