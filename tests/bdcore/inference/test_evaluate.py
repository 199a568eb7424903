"""A run's checkpoint over its val tiles: per-tile table, exact scoring, cache per checkpoint, threshold re-scoring."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from bdcore.inference import evaluate as E
from bdcore.engine import runs
from bdcore.inference.evaluate import EvaluationError, evaluate_checkpoint, load_prediction


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """A really trained (tiny) run: 6 synthetic tiles, 1 epoch of 4 steps, in-process."""
    from bdcore.engine.config import RunConfig
    from bdcore.engine.train import train
    from synth import make_aoi

    base = tmp_path_factory.mktemp("evalrun")
    aoi = make_aoi(base / "aoi", n_tiles=6, size=64, seed=2, buildings_per_tile=3)
    cfg = RunConfig(data_root=str(aoi.root), arch="Unet", encoder="resnet18", encoder_weights=None, epochs=1,
                    steps_per_epoch=4, crop_size=64, batch_size=2, workers=0, device="cpu", val_fraction=0.34,
                    building_f1_tiles=0, lr=3e-3)
    run_dir = runs.create_run(cfg, name="evalrun", root=base / "runs")
    train(cfg, run_dir)
    return run_dir, aoi, cfg


def _val_ids(cfg):
    from bdcore.data.catalog import load_catalog
    from bdcore.data.split import split_tiles

    cat = load_catalog(cfg.resolved_data_root())
    return split_tiles(cat[cat["labels"].notna()], val_fraction=cfg.val_fraction, seed=cfg.seed, method=cfg.split)[1]


def test_per_tile_table_on_the_runs_val_split_and_cache_hit(short_run, monkeypatch):
    run_dir, aoi, cfg = short_run
    df, summary = evaluate_checkpoint(run_dir, which="best")
    assert sorted(df["tile_id"]) == sorted(_val_ids(cfg)) and len(df) == 2
    for col in ("pixel_iou", "pixel_precision", "pixel_recall", "tp", "fp", "fn", "f1", "n_truth", "n_pred"):
        assert col in df.columns
    assert not df["cached"].any() and summary["cached_tiles"] == 0
    assert list(df["n_truth"]) == [len(aoi.tile(t).boxes_px) for t in df["tile_id"]]
    assert (df["tp"] + df["fn"] == df["n_truth"]).all() and (df["tp"] + df["fp"] == df["n_pred"]).all()
    # same numbers as the trainer's own validation of best.pt (same split, normalisation and padding)
    from bdcore.engine.models import load_checkpoint

    val = load_checkpoint(run_dir / "best.pt")["val"]
    assert summary["pixel_iou"] == pytest.approx(val["val_iou"], abs=0.01)

    pdir = E.prediction_dir(run_dir, "best")
    assert sorted(p.stem for p in pdir.glob("*.npy")) == sorted(df["tile_id"])

    # second call: every tile from the cache, the model is never loaded
    from bdcore.inference.predictor import Predictor

    monkeypatch.setattr(Predictor, "from_checkpoint", classmethod(lambda *a, **k: pytest.fail("model reloaded")))
    df2, summary2 = evaluate_checkpoint(run_dir, which="best")
    assert df2["cached"].all() and summary2["cached_tiles"] == 2
    assert summary2["pixel_iou"] == summary["pixel_iou"] and summary2["F1Score"] == summary["F1Score"]
    # another threshold re-scores the cached probabilities
    _, s_hi = evaluate_checkpoint(run_dir, which="best", threshold=0.99)
    assert s_hi["cached_tiles"] == 2
    assert s_hi["pixel_precision"] >= summary["pixel_precision"] or s_hi["pixel_recall"] <= summary["pixel_recall"]


def test_perfect_and_empty_predictions_score_exactly(short_run):
    """Scoring checked against ground truth: the cache is filled with the true masks, then with nothing."""
    run_dir, aoi, cfg = short_run
    ids = _val_ids(cfg)
    pdir = E.prediction_dir(run_dir, "last")
    pdir.mkdir(parents=True, exist_ok=True)
    for t in ids:
        np.save(pdir / f"{t}.npy", (aoi.tile(t).expected_mask()[None] * 255).astype(np.uint8))
    n = sum(len(aoi.tile(t).boxes_px) for t in ids)
    for outline in ("none", "simplify", "orthogonal"):
        df, s = evaluate_checkpoint(run_dir, which="last", min_area=0.0, outline=outline)
        assert df["cached"].all() and s["outline"] == outline
        assert s["pixel_iou"] == 1.0 and s["pixel_precision"] == 1.0 and s["pixel_recall"] == 1.0
        assert (s["TruePos"], s["FalsePos"], s["FalseNeg"], s["F1Score"]) == (n, 0, 0, 1.0)
    for t in ids:
        np.save(pdir / f"{t}.npy", np.zeros((1, 64, 64), np.uint8))
    df, s = evaluate_checkpoint(run_dir, which="last")
    assert (s["TruePos"], s["FalsePos"], s["FalseNeg"], s["pixel_iou"]) == (0, 0, n, 0.0)
    prob = load_prediction(run_dir, "last", ids[0])
    assert prob.shape == (1, 64, 64) and prob.dtype == np.float32 and prob.max() == 0.0


def test_new_checkpoint_gets_a_new_cache(short_run, tmp_path):
    run_dir, aoi, cfg = short_run
    ids = _val_ids(cfg)
    old = E.prediction_dir(run_dir, "best")
    load_prediction(run_dir, "best", ids[0])
    assert (old / f"{ids[0]}.npy").exists()
    st = (run_dir / "best.pt").stat()
    os.utime(run_dir / "best.pt", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # "rewritten" by training
    new = E.prediction_dir(run_dir, "best")
    assert new != old and new.name.startswith("best-")
    prob = load_prediction(run_dir, "best", ids[0])
    assert prob.shape == (1, 64, 64) and 0.0 <= prob.min() and prob.max() <= 1.0
    assert not old.exists()  # the stale cache is dropped
    assert load_prediction(run_dir, "best", ids[1], compute=False) is None


def test_errors_name_the_fix(short_run, tmp_path):
    run_dir, _, cfg = short_run
    bare = runs.create_run(cfg, name="no-ckpt", root=tmp_path)
    with pytest.raises(EvaluationError, match="best.pt not found"):
        evaluate_checkpoint(bare)
    with pytest.raises(EvaluationError, match="which must be"):
        evaluate_checkpoint(run_dir, which="worst")
    with pytest.raises(EvaluationError, match="not in the catalog"):
        evaluate_checkpoint(run_dir, tiles=["img999"])
    with pytest.raises(EvaluationError, match="outline must be one of none, simplify, orthogonal"):
        evaluate_checkpoint(run_dir, outline="square")


def test_cli_evaluate(short_run, capsys):
    from bdcore.cli import main

    run_dir, _, _ = short_run
    assert main(["evaluate", str(run_dir), "--tiles", "all"]) == 0
    out = capsys.readouterr().out
    assert "6 tiles" in out and "SpaceNet F1" in out
    assert main(["evaluate", str(run_dir), "--tiles", "all", "--outline", "none", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)["summary"]
    assert summary["outline"] == "none" and summary["cached_tiles"] == 6


def test_checkpoint_carries_training_band_stats_for_inference_elsewhere(short_run, tmp_path, monkeypatch):
    """Inference normalises exactly as training did even where the training data is absent."""
    import shutil

    from bdcore.data.catalog import load_catalog
    from bdcore.data.imagery import band_stats
    from bdcore.engine.models import load_checkpoint
    from bdcore.inference.predictor import Predictor

    run_dir, aoi, cfg = short_run
    stats = band_stats(load_catalog(cfg.resolved_data_root()), product=cfg.product)
    payload = load_checkpoint(run_dir / "last.pt")
    assert payload["band_stats"]["lo"] == stats.lo and payload["band_stats"]["hi"] == stats.hi
    # the checkpoint alone (copied away, data root unknown to it) still gives training's normalisation
    ck = tmp_path / "moved.pt"
    shutil.copy(run_dir / "last.pt", ck)
    import bdcore.inference.predictor

    monkeypatch.setattr(bdcore.inference.predictor, "training_band_stats", lambda cfg: None)  # the data is not on this machine
    pred = Predictor.from_checkpoint(ck, device="cpu")
    assert pred.normalization.source == "checkpoint"
    assert list(pred.normalization.lo) == stats.lo and list(pred.normalization.hi) == stats.hi


def test_empty_tile_predicted_empty_is_perfect_not_worst(tmp_path):
    """No buildings and no prediction: per-tile scores are 1, so the Review table does not rank it worst."""
    from synth import make_aoi

    aoi = make_aoi(tmp_path / "aoi", n_tiles=2, size=64, seed=3, empty_tiles=[0])
    t = aoi.tiles[0]
    assert not t.boxes_px
    row = E.score_tile(np.zeros((1, 64, 64), np.float32), str(t.images["PS-RGB"]), str(t.labels))
    assert (row["pixel_iou"], row["f1"], row["n_truth"], row["n_pred"]) == (1.0, 1.0, 0, 0)
    # one false building on that empty tile: precision 0, F1 0
    prob = np.zeros((1, 64, 64), np.float32)
    prob[0, 10:30, 10:30] = 1.0
    row = E.score_tile(prob, str(t.images["PS-RGB"]), str(t.labels))
    assert (row["pixel_iou"], row["f1"], row["fp"]) == (0.0, 0.0, 1)


def test_normalize_image_is_cached_apart_and_unlike_inputs_warn_once(short_run, monkeypatch, caplog, capsys):
    import shutil

    import bdcore.inference.predictor
    from bdcore.cli import main
    from bdcore.inference.normalization import Normalization

    run_dir, aoi, cfg = short_run
    _, s_ck = evaluate_checkpoint(run_dir, which="best", tiles="all")
    _, s_img = evaluate_checkpoint(run_dir, which="best", tiles="all", normalize="image")
    assert s_ck["normalize"] == "checkpoint" and s_img["normalize"] == "image"
    assert s_img["predictions"] == str(E.prediction_dir(run_dir, "best", "image"))
    assert s_img["predictions"].endswith("-image") and s_img["cached_tiles"] == 0
    ck_dir, img_dir = E.prediction_dir(run_dir, "best"), E.prediction_dir(run_dir, "best", "image")
    assert ck_dir.is_dir() and img_dir.is_dir()  # neither mode evicts the other
    assert s_ck["warning"] is None and s_img["warning"] is None  # synthetic tiles are like the training data
    differ = [t for t in aoi.tile_ids if not np.array_equal(np.load(ck_dir / f"{t}.npy"), np.load(img_dir / f"{t}.npy"))]
    assert differ  # the model saw other inputs

    assert main(["evaluate", str(run_dir), "--tiles", "all", "--normalize", "image", "--json"]) == 0
    js = capsys.readouterr().out
    summary = __import__("json").loads(js[js.index("{"):])["summary"]
    assert summary["normalize"] == "image" and summary["cached_tiles"] == 6

    # a checkpoint whose training statistics are far from these tiles: ONE warning line for the whole evaluation
    monkeypatch.setattr(bdcore.inference.predictor, "normalization_from_payload",
                        lambda payload: Normalization(np.full(3, 20000.0), np.full(3, 40000.0), "checkpoint"))
    shutil.rmtree(E.prediction_dir(run_dir, "last"), ignore_errors=True)
    caplog.clear()
    caplog.set_level("INFO")
    _, s = evaluate_checkpoint(run_dir, which="last", tiles="all")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and r.name.startswith("bdcore")]
    assert s["unlike_training"] == 6 and warnings == [s["warning"]]
    assert s["warning"].startswith("6 of 6 predicted tiles look unlike the training data, e.g. RGB-PanSharpen_AOI_3_Paris_img")
    assert "try --normalize image" in s["warning"]
    # cached now: no second warning, and the per-image mode never compares
    caplog.clear()
    _, s = evaluate_checkpoint(run_dir, which="last", tiles="all")
    assert s["warning"] is None and s["cached_tiles"] == 6
    with pytest.raises(ValueError, match="normalize must be one of checkpoint, image"):
        evaluate_checkpoint(run_dir, normalize="percentile")


@pytest.fixture(scope="module")
def learnt_run(tmp_path_factory):
    """A tiny run trained long enough (16 steps, ~5-30 s on 2 shared cores) to find buildings: across thresholds its
    val tiles have true positives, false positives and misses."""
    from bdcore.engine.config import RunConfig
    from bdcore.engine.train import train
    from synth import make_aoi

    base = tmp_path_factory.mktemp("learntrun")
    aoi = make_aoi(base / "aoi", n_tiles=6, size=96, seed=2, buildings_per_tile=4)
    cfg = RunConfig(data_root=str(aoi.root), arch="Unet", encoder="resnet18", encoder_weights=None, epochs=2,
                    steps_per_epoch=8, crop_size=64, batch_size=4, workers=0, device="cpu", val_fraction=0.34,
                    building_f1_tiles=0, lr=3e-3)
    run_dir = runs.create_run(cfg, name="learnt", root=base / "runs")
    train(cfg, run_dir)
    return run_dir


@pytest.mark.slow
def test_review_picture_shows_the_score_row_on_every_val_tile(learnt_run):
    """One match per tile: the Review picture (drawn from evaluate.review_tile's TileScore) and the per-tile score
    row of evaluate_checkpoint have the same TP/FP/FN on every val tile, at every threshold."""
    from bdcore.data.imagery import read_image
    from bdcore.viz import overlays

    seen = {"tp": 0, "fp": 0, "fn": 0}
    for threshold in (0.2, 0.5, 0.8, 0.95):
        df, _ = evaluate_checkpoint(learnt_run, which="best", threshold=threshold)
        assert len(df) == 2
        for row in df.to_dict("records"):
            score, image_path = E.review_tile(learnt_run, "best", row["tile_id"], threshold)
            assert score.row() == {k: row[k] for k in score.row()}
            views = overlays.review_images(read_image(image_path), score)
            assert views.drawn == {"tp": row["tp"], "fp": row["fp"], "fn": row["fn"]}
            seen = {k: seen[k] + v for k, v in views.drawn.items()}
    assert all(seen.values()), seen  # the check saw matches, false alarms and misses


def test_checkpoints_of_run_folders(short_run, tmp_path):
    run_dir, _, _ = short_run
    assert E.available_checkpoints(run_dir) == ["best", "last"]
    assert E.available_checkpoints(tmp_path) == []
    assert E.checkpoints_of([run_dir, tmp_path]) == {"evalrun · best.pt": run_dir / "best.pt",
                                                     "evalrun · last.pt": run_dir / "last.pt"}


def test_tile_buildings_carry_the_scorers_match_on_a_real_vegas_tile(vegas_small):
    """Every building of a scored tile, for the map: TP/FP/FN counts are the score row's, each matched pair's IoU is
    the scorer's (and the IoU of the two polygons), confidences are the proposals', areas in m²."""
    import shapely

    from bdcore.data import labels
    from bdcore.data.catalog import load_catalog

    row = load_catalog(vegas_small).loc["img1265"]
    img, lab = row["PS-RGB"], row["labels"]
    prob = labels.tile_mask(img, lab)[0].astype(np.float32) * 0.9
    prob[:, 400:] = 0.0  # the right part missed: false negatives
    prob[5:40, 5:40] = 0.7  # a made-up building: a false positive
    score = E.tile_score(prob[None], img, lab, outline="orthogonal")
    b = E.tile_buildings(score, img)
    r = score.row()
    assert min(r["tp"], r["fp"], r["fn"]) >= 1
    pred, truth = b[b["layer"] == "prediction"], b[b["layer"] == "truth"]
    assert (pred["status"] == "TP").sum() == (truth["status"] == "TP").sum() == r["tp"]
    assert (pred["status"] == "FP").sum() == r["fp"] and (truth["status"] == "FN").sum() == r["fn"]
    assert len(pred) == r["n_pred"] and len(truth) == r["n_truth"] == 49 and b.crs == "EPSG:4326"
    for p, t, iou in score.match["matches"]:
        assert pred.loc[pred["index"] == p, "iou"].item() == iou == truth.loc[truth["index"] == t, "iou"].item()
        a, c = score.proposals[p][0], score.truth[t]
        assert iou == pytest.approx(shapely.area(a.intersection(c)) / shapely.area(a.union(c)), rel=1e-9)
        assert truth.loc[truth["index"] == t, "confidence"].item() == score.proposals[p][1]
    assert pred["confidence"].tolist() == [c for _, c in score.proposals]
    assert pred.loc[pred["status"] == "FP", "iou"].isna().all() and truth.loc[truth["status"] == "FN", "iou"].isna().all()
    # truth areas: the labels file's footprints in m² (~0.27 m pixels: one px² is the same ~0.07 m² for each)
    want = labels.building_areas_m2(labels.read_buildings(lab))
    assert np.allclose(truth["area"].to_numpy(), want, rtol=1e-6) and set(b["area_unit"]) == {"m²"}
    ratio = (truth["area"] / truth["area_px"]).to_numpy()
    assert 0.06 < ratio.min() and ratio.max() < 0.08 and np.ptp(ratio) < 0.001
