"""Tests of the time-series (forecasting) modality: reading CSV/NPY, time features, the chronological
split and train-only scaler, windows, RevIN, the embedding map, the model, the baselines, bad inputs,
and the CLI (make-series, train, eval, predict). Tiny models (UniRepLKNet-A on a 28 x 28 map)."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from largekernel.engine.config import resolve_config
from largekernel.modalities import get_modality
from largekernel.modalities.series_data import make_series, write_series_csv
from largekernel.modalities.timeseries import (Forecaster, RevIN, SeriesEmbedding, WindowDataset,
                                               fit_scaler, infer_season, map_side, read_series,
                                               split_bounds, time_features, window_starts)
from clitools import run_cli, sub_env

TINY = ["--modality", "timeseries", "--model", "unireplknet_a", "--lookback", "48", "--horizon", "12",
        "--embed-dim", "16", "--warmup-epochs", "0", "--lr", "2e-3", "--batch-size", "16"]


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def hourly_csv(path: Path, values: np.ndarray, start: str = "2024-01-01T00:00:00") -> Path:
    times = np.datetime64(start, "s") + np.arange(len(values)).astype("timedelta64[h]")
    return write_series_csv(path, times, values.reshape(len(values), -1),
                            [f"c{i}" for i in range(values.reshape(len(values), -1).shape[1])])


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------------------------- reading

def test_read_csv_with_auto_detected_timestamp_and_targets(tmp_path):
    p = write_csv(tmp_path / "s.csv", "load,timestamp,temp\n1.5,2024-03-01 00:00,10\n"
                                      "2.5,2024-03-01 01:00,11\n-3,2024-03-01 02:00,12.25\n")
    s = read_series(p)
    assert s.columns == ["load", "temp"]
    np.testing.assert_array_equal(s.values, [[1.5, 10], [2.5, 11], [-3, 12.25]])
    assert [str(t) for t in s.times] == ["2024-03-01T00:00:00", "2024-03-01T01:00:00", "2024-03-01T02:00:00"]
    s = read_series(p, targets=["temp"])
    assert s.columns == ["temp"] and s.values[:, 0].tolist() == [10, 11, 12.25]
    with pytest.raises(ValueError, match=r"column\(s\) \['wind'\] not found; the series has \['load', 'temp'\]"):
        read_series(p, targets=["wind"])
    with pytest.raises(ValueError, match="no column 'when' \\(--time-column\\)"):
        read_series(p, time_column="when")


def test_read_npy(tmp_path):
    np.save(tmp_path / "one.npy", np.arange(5, dtype=np.float32))
    np.save(tmp_path / "two.npy", np.arange(10).reshape(5, 2))
    np.save(tmp_path / "three.npy", np.zeros((2, 3, 4)))
    s = read_series(tmp_path / "one.npy")
    assert s.columns == ["v0"] and s.times is None and s.values[:, 0].tolist() == [0, 1, 2, 3, 4]
    s = read_series(tmp_path / "two.npy", targets=["v1"])
    assert s.columns == ["v1"] and s.values[:, 0].tolist() == [1, 3, 5, 7, 9]
    with pytest.raises(ValueError, match=r"three.npy: expected a numeric array of shape \(time,\) or "
                                         r"\(time, variables\), got float64 \(2, 3, 4\)"):
        read_series(tmp_path / "three.npy")
    with pytest.raises(FileNotFoundError, match="nope.csv does not exist"):
        read_series(tmp_path / "nope.csv")


# ---------------------------------------------------------------------------------- bad input

def test_missing_values_error_or_interpolate(tmp_path):
    p = write_csv(tmp_path / "m.csv", "date,a,b\n2024-01-01 00:00,1,10\n2024-01-01 01:00,,20\n"
                                      "2024-01-01 02:00,3,\n2024-01-01 03:00,7,\n2024-01-01 05:00,11,60\n")
    with pytest.raises(ValueError, match=r"m.csv: column 'a' has 1 missing value\(s\) \(first at line 3\); "
                                         r"fill them, or pass --missing interpolate"):
        read_series(p)
    s = read_series(p, missing="interpolate")
    # linear in time: b at 02:00 and 03:00 between 20 (01:00) and 60 (05:00); the absent 04:00 inserted
    np.testing.assert_allclose(s.values, [[1, 10], [2, 20], [3, 30], [7, 40], [9, 50], [11, 60]])
    edge = write_csv(tmp_path / "e.csv", "date,a\n2024-01-01 00:00,\n2024-01-01 01:00,4\n2024-01-01 02:00,\n")
    assert read_series(edge, missing="interpolate").values[:, 0].tolist() == [4, 4, 4]
    with pytest.raises(ValueError, match="missing='drop'; choose one of error, interpolate"):
        read_series(p, missing="drop")


@pytest.mark.parametrize("text, message", [
    ("date,a\n2024-01-01 00:00,1\n2024-01-01 01:00,2\n2024-01-01 01:00,3\n",
     r"duplicate timestamp 2024-01-01T01:00:00 \(lines 3 and 4\); remove or aggregate duplicate rows"),
    ("date,a\n2024-01-01 00:00,1\n2024-01-01 02:00,2\n2024-01-01 01:00,3\n",
     r"timestamps are not sorted \(line 4: 2024-01-01T01:00:00 comes after 2024-01-01T02:00:00\); "
     r"sort the file by time"),
    ("date,a,site\n2024-01-01 00:00,1,north\n2024-01-01 01:00,2,south\n",
     r"column 'site' is not numeric \(line 2: 'north'\); remove it or choose numeric columns with --targets"),
    ("date,a\n2024-01-01 00:00,1\n2024-01-01 01:00,x2\n",
     r"column 'a' is not numeric \(line 3: 'x2'\)"),
    ("date,a\n2024-01-01 00:00,1\nyesterday,2\n",
     r"line 3: cannot parse timestamp 'yesterday' in column 'date'"),
])
def test_bad_csv_gives_a_specific_error(tmp_path, text, message):
    p = write_csv(tmp_path / "bad.csv", text)
    with pytest.raises(ValueError, match=message):
        read_series(p)


def test_too_short_series_fails_before_training(tmp_path):
    p = hourly_csv(tmp_path / "short.csv", np.arange(80.0))
    code, out, err = run_cli(["train", "--data", p, "--output", tmp_path / "run", *TINY, "--epochs", "1"])
    assert code == 2 and "short.csv: the training part (0.7 of 80 rows = 56) is shorter than lookback " \
                          "+ horizon = 60" in err
    p = hourly_csv(tmp_path / "short.csv", np.arange(50.0))
    code, out, err = run_cli(["train", "--data", p, "--output", tmp_path / "run", *TINY,
                              "--lookback", "48", "--horizon", "24"])
    assert code == 2 and "short.csv: the series has 50 rows, shorter than lookback + horizon = 48 + 24" in err
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------- features, split

def test_time_features_exact_and_in_range():
    t = np.array(["2021-01-01T00:00", "2021-12-31T23:00", "2024-02-29T12:00", "2024-03-04T06:00"],
                 dtype="datetime64[s]")
    f = time_features(t)
    # hour/23, weekday/6 (Mon=0: Fri, Fri, Thu, Mon), (mday-1)/30, (yday-1)/365, each - 0.5
    expected = [[0, 4 / 6, 0, 0], [1, 4 / 6, 30 / 30, 364 / 365], [12 / 23, 3 / 6, 28 / 30, 59 / 365],
                [6 / 23, 0, 3 / 30, 63 / 365]]
    np.testing.assert_allclose(f, np.array(expected) - 0.5, atol=1e-7)
    year = np.datetime64("2024-01-01T00", "s") + np.arange(366 * 24).astype("timedelta64[h]")
    f = time_features(year)
    assert f.dtype == np.float32 and f.shape == (366 * 24, 4)
    assert f.min() == -0.5 and f.max() == 0.5
    assert time_features(None, 3).tolist() == [[0.0] * 4] * 3


def test_season_from_timestamps():
    base = np.datetime64("2024-01-01", "s")
    assert infer_season(base + np.arange(10).astype("timedelta64[h]")) == 24
    assert infer_season(base + np.arange(10).astype("timedelta64[D]")) == 7
    weekdays = base + np.array([0, 1, 2, 3, 4, 7, 8, 9]).astype("timedelta64[D]")  # Mon..Fri, Mon..
    assert infer_season(weekdays) == 5
    assert infer_season(base + (np.arange(10) * 15).astype("timedelta64[m]")) == 96
    assert infer_season(None) == 1


def test_chronological_split_windows_and_train_only_scaler():
    assert split_bounds(100, (0.7, 0.1, 0.2), 5, 2, "x") == dict(train=(0, 70), val=(70, 80), test=(80, 100))
    assert len(window_starts((0, 70), 5, 2)) == 64  # targets 5..69
    assert window_starts((70, 80), 5, 2).tolist() == list(range(70, 79))
    assert len(window_starts((80, 100), 5, 2)) == 19
    assert window_starts((0, 70), 5, 2, stride=10).tolist() == [5, 15, 25, 35, 45, 55, 65]
    values = np.stack([np.arange(100.0), np.full(100, 3.0)], axis=1)
    mean, std = fit_scaler(values, 70)
    assert mean.tolist() == [34.5, 3.0]
    assert std[0] == pytest.approx(math.sqrt((70 ** 2 - 1) / 12)) and std[1] == 1.0  # constant -> 1
    with pytest.raises(ValueError, match="split_fractions=\\[0.7, 0.2, 0.2\\]: give 3 fractions"):
        split_bounds(100, (0.7, 0.2, 0.2), 5, 2, "x")


def test_modality_datasets_use_the_configured_split(tmp_path):
    values = np.stack([np.arange(200.0), np.sin(np.arange(200) / 3)], axis=1)
    p = hourly_csv(tmp_path / "s.csv", values)
    cfg = resolve_config(overrides=dict(modality="timeseries", train=str(p), lookback=10, horizon=4,
                                        window_stride=2))
    m = get_modality("timeseries")
    data = m.datasets(cfg)
    assert data.classes == ["c0", "c1"]
    assert len(data.train) == len(range(10, 140 - 4 + 1, 2)) == 64 and len(data.val) == 20 - 4 + 1
    assert data.train.mean[0] == pytest.approx(69.5) and m.scaler[0][0] == pytest.approx(69.5)
    x, y = data.train[0]
    assert x.shape == (10, 2 + 4) and y.shape == (4, 2)
    std0 = data.train.std[0]
    np.testing.assert_allclose(x[:, 0].numpy(), (np.arange(10) - 69.5) / std0, rtol=1e-5)
    np.testing.assert_allclose(y[:, 0].numpy(), (np.arange(10, 14) - 69.5) / std0, rtol=1e-5)
    np.testing.assert_allclose(x[:, 2:].numpy(), time_features(data.train.series.times[:10]))
    test = m.datasets(resolve_config(overrides=dict(cfg.to_dict(), train=None, val=str(p))), train=False).val
    assert test.starts.tolist() == list(range(160, 197))  # the last 20% (40 rows), stride 1
    assert test.mean[0] == pytest.approx(69.5)  # still the training part's scaler


# ---------------------------------------------------------------------------------- model parts

def test_revin_round_trip_is_identity():
    torch.manual_seed(0)
    revin = RevIN(3)
    with torch.no_grad():
        revin.weight.uniform_(0.5, 2.0)
        revin.bias.normal_()
    x = torch.randn(4, 20, 3) * 5 + 2
    z, stats = revin.normalize(x)
    torch.testing.assert_close(revin.denormalize(z, stats), x, atol=1e-4, rtol=1e-5)
    plain = RevIN(3)
    z, _ = plain.normalize(x)
    torch.testing.assert_close(z.mean(1), torch.zeros(4, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(1, unbiased=False), torch.ones(4, 3), atol=1e-4, rtol=0)


def test_circular_value_embedding():
    torch.manual_seed(0)
    emb = SeriesEmbedding(3, 8, dropout=0.0).eval()
    values, marks = torch.randn(2, 10, 3), torch.rand(2, 10, 4) - 0.5
    out = emb(values, marks)
    assert out.shape == (2, 10, 8)
    padded = torch.cat([values[:, -1:], values, values[:, :1]], dim=1).transpose(1, 2)  # wrap around
    ref = torch.nn.functional.conv1d(padded, emb.value.weight).transpose(1, 2) + marks @ emb.time.weight.T
    torch.testing.assert_close(out, ref)


def test_forecaster_output_shape_and_map():
    assert map_side(48, 768) == 192 and map_side(48, 16) == 28 and map_side(96, 96) == 96
    cfg = resolve_config(overrides=dict(modality="timeseries", model="unireplknet_a", lookback=48,
                                        horizon=12, embed_dim=16))
    model = get_modality("timeseries").build_model(cfg, 3).eval()
    assert isinstance(model, Forecaster) and model.backbone.in_chans == 1
    x = torch.randn(2, 48, 3 + 4)
    m, _ = model.to_map(x)
    assert m.shape == (2, 1, 28, 28) and m[0, 0].flatten()[48 * 16:].abs().sum() == 0  # zero padding
    assert model(x).shape == (2, 12, 3)
    assert set(model.state_dict()) >= {"scaler_mean", "scaler_std", "revin.weight", "head.weight"}


# ---------------------------------------------------------------------------------- baselines

def make_dataset(values: np.ndarray, lookback: int, horizon: int, season: int) -> WindowDataset:
    from largekernel.modalities.timeseries import Series

    series = Series(values.reshape(len(values), -1), None, ["a"], "mem")
    bounds = split_bounds(len(values), (0.7, 0.1, 0.2), lookback, horizon, "mem")
    mean, std = fit_scaler(series.values, bounds["train"][1])
    return WindowDataset(series, window_starts(bounds["test"], lookback, horizon), lookback, horizon,
                         mean, std, bounds["train"][1], season)


def baseline_errors(ds: WindowDataset) -> dict[str, float]:
    x, y = ds.windows()
    return {k: float(((p - y) ** 2).mean()) for k, p in ds.baselines(x).items()}


def test_baselines_exact_on_constructed_series():
    periodic = np.tile(np.array([0.0, 3, 1, 4, 1, 5, 9, 2]), 40)  # period 8
    err = baseline_errors(make_dataset(periodic, 16, 5, 8))
    assert err["seasonal_naive"] == 0.0 and err["last_value"] > 1
    constant = np.full(300, 7.0)
    err = baseline_errors(make_dataset(constant, 16, 5, 8))
    assert err["last_value"] == 0.0 and err["seasonal_naive"] == 0.0 and err["linear"] < 1e-10
    ramp = np.arange(300.0)
    ds = make_dataset(ramp, 16, 5, 8)
    x, y = ds.windows()
    # a linear trend: last value lags by h steps; the least-squares map follows it
    step = 1 / ds.std[0]
    torch.testing.assert_close(ds.baselines(x)["last_value"] - y,
                               -step * torch.arange(1, 6.0)[None, :, None].expand_as(y))
    assert baseline_errors(ds)["linear"] < 1e-3 * baseline_errors(ds)["last_value"]


def test_evaluate_scores_model_and_baselines_on_the_same_windows():
    class LastValue(torch.nn.Module):
        def forward(self, x):
            return x[:, -1:, :1].expand(-1, 5, -1)

    rng = np.random.default_rng(0)
    ds = make_dataset(np.cumsum(rng.normal(size=400)), 16, 5, 8)
    cfg = resolve_config(overrides=dict(modality="timeseries", lookback=16, horizon=5))
    m = get_modality("timeseries").evaluate(LastValue(), ds, cfg, ["a"], torch.device("cpu"), 7)
    assert m["n"] == len(ds) == 80 - 5 + 1 and m["skipped"] == []
    assert m["mse"] == pytest.approx(m["last_value_mse"], rel=1e-6) and m["loss"] == m["mse"]
    assert m["mae"] == pytest.approx(m["last_value_mae"], rel=1e-6)
    assert {"linear_mse", "seasonal_naive_mae"} <= set(m)


# ---------------------------------------------------------------------------------- CLI end to end

@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ts")
    r = subprocess.run([sys.executable, "-m", "largekernel", "make-series", root / "gen.csv",
                        "--length", "600", "--variables", "2", "--seed", "1"],
                       env=sub_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout == (f"wrote {root / 'gen.csv'}: 600 rows x 2 variables "
                        f"(2024-01-01T00:00:00 .. 2024-01-25T23:00:00)\n")
    r = subprocess.run([sys.executable, "-m", "largekernel", "train", "--data", root / "gen.csv",
                        "--output", root / "run", *TINY, "--epochs", "1", "--max-steps", "3"],
                       env=sub_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return root


def test_cli_train_records_scaler_and_baselines(cli_run):
    from safetensors.torch import load_file

    lines = (cli_run / "gen.csv").read_text().splitlines()
    assert lines[0] == "date,s0,s1" and len(lines) == 601
    values = np.loadtxt(cli_run / "gen.csv", delimiter=",", skiprows=1, usecols=(1, 2))
    weights = load_file(cli_run / "run" / "best.safetensors")
    np.testing.assert_allclose(weights["scaler_mean"].numpy(), values[:420].mean(0), rtol=1e-5)
    np.testing.assert_allclose(weights["scaler_std"].numpy(), values[:420].std(0), rtol=1e-5)
    epoch = [json.loads(x) for x in (cli_run / "run" / "metrics.jsonl").read_text().splitlines()][-1]
    assert epoch["step"] == 3 and epoch["val_n"] == 60 - 12 + 1
    assert epoch["val_season"] == 24 and all(np.isfinite(epoch[f"val_{k}_mse"])
                                             for k in ("linear", "seasonal_naive", "last_value"))


def test_cli_eval_prints_model_and_baselines(cli_run, tmp_path):
    code, out, err = run_cli(["eval", cli_run / "run" / "best.safetensors", "--data", cli_run / "gen.csv",
                              "--output", tmp_path])
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == ("test part of the series: 109 windows, 2 variables; MSE/MAE in units of the "
                        "training scaler (per-variable standardisation)")
    assert [line.split("  ")[0] for line in lines[2:6]] == [
        "UniRepLKNet", "linear (DLinear-style)", "seasonal naive (m=24)", "last value"]
    metrics = json.loads((tmp_path / "eval.json").read_text())
    assert metrics["n"] == 109 and f"{metrics['linear_mse']:.4f}" in lines[3]


def test_cli_predict_writes_forecast_csv_and_png(cli_run, tmp_path):
    ckpt = cli_run / "run" / "best.safetensors"
    code, out, err = run_cli(["predict", cli_run / "gen.csv", "--checkpoint", ckpt, "--output", tmp_path])
    assert code == 0, err
    assert out == (f"{cli_run / 'gen.csv'}: 12-step forecast of 2 variable(s); wrote "
                   f"{tmp_path / 'gen.forecast.csv'}, {tmp_path / 'gen.forecast.png'}\n")
    rows = (tmp_path / "gen.forecast.csv").read_text().splitlines()
    assert rows[0] == "date,s0,s1" and len(rows) == 1 + 12
    assert rows[1].startswith("2024-01-26 00:00:00,") and rows[12].startswith("2024-01-26 11:00:00,")
    with Image.open(tmp_path / "gen.forecast.png") as im:
        assert im.format == "PNG" and im.size[0] > 100
    # longer than trained: autoregressive; backtest: the last known steps, with the truth
    code, out, err = run_cli(["predict", cli_run / "gen.csv", "--checkpoint", ckpt, "--output",
                              tmp_path / "bt", "--horizon", "30", "--backtest", "--json"])
    assert code == 0, err
    result = json.loads(out)[0]
    rows = (tmp_path / "bt" / "gen.forecast.csv").read_text().splitlines()
    assert rows[0] == "date,s0,s1,s0_true,s1_true" and len(rows) == 31
    assert rows[1].startswith("2024-01-24 18:00:00,") and result["horizon"] == 30
    assert np.isfinite(result["mse"]) and len(result["forecast"]) == 30


def test_cli_reparam_folds_the_forecaster(cli_run, tmp_path):
    code, out, err = run_cli(["reparam", cli_run / "run" / "best.safetensors", "-o", tmp_path / "d.safetensors"])
    assert code == 0, err
    assert "(OK, tolerance 1e-5)" in out and "equivalence check at" in out
    code, out, err = run_cli(["predict", cli_run / "gen.csv", "--checkpoint", tmp_path / "d.safetensors",
                              "--output", tmp_path, "--json"])
    assert code == 0, err
    assert len(json.loads(out)[0]["forecast"]) == 12


def test_cli_predict_reports_unreadable_file(cli_run, tmp_path):
    bad = write_csv(tmp_path / "bad.csv", "date,s0,s1\n2024-01-01 00:00,1,2\n")
    code, out, err = run_cli(["predict", bad, "--checkpoint", cli_run / "run" / "best.safetensors"])
    assert code == 1 and out == f"{bad}: ERROR {bad}: 1 rows; forecasting needs at least 48 (lookback 48)\n"


# ---------------------------------------------------------------------------------- learning (slow)

@pytest.mark.slow
def test_model_beats_the_linear_baseline_on_multi_seasonal_data(tmp_path):
    times, values = make_series(2000, 3, seed=0)
    write_series_csv(tmp_path / "gen.csv", times, values, ["s0", "s1", "s2"])
    r = subprocess.run([sys.executable, "-m", "largekernel", "train", "--preset", "forecast_tiny",
                        "--data", tmp_path / "gen.csv", "--output", tmp_path / "run"],
                       env=dict(sub_env(), OMP_NUM_THREADS="2"), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    code, out, err = run_cli(["eval", tmp_path / "run" / "best.safetensors", "--data", tmp_path / "gen.csv",
                              "--json"])
    m = json.loads(out)
    assert m["mse"] < m["linear_mse"] < m["seasonal_naive_mse"] < m["last_value_mse"], out
