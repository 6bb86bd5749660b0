"""The time-series modality: multivariate forecasting with the paper's recipe.

A window of `lookback` steps -> per-window normalisation (RevIN, learnable affine) -> value
embedding (circular Conv1d k=3 over time, variables as channels) + time-feature embedding (hour of
day, day of week, day of month, day of year in [-0.5, 0.5]) -> dropout -> (L, D') -> one 1 x S x S
map (L*D' zero-padded to the next square) -> UniRepLKNet (in_chans 1, pooled features) -> Linear to
horizon x variables -> RevIN undone. Data: a CSV with a timestamp column (the long-horizon benchmarks'
layout) or an NPY array (time, variables); chronological train/val/test split (0.7/0.1/0.2), a
per-variable scaler fitted on the training part and stored in the model, so `predict` needs only
the checkpoint. `evaluate` scores the model next to last-value, seasonal-naive and a linear
(DLinear-style) baseline on the same windows.
"""
from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ..engine.commands import RANDOM_SEED, Command, arg, positive_int
from ..engine.config import TrainConfig, option
from ..engine.data import DataBundle
from ..engine.metrics import regression_errors
from ..engine.plugin import Plugin, register_plugin
from ..models.registry import create_model
from . import table_io

log = logging.getLogger(__name__)

EXTENSIONS = (".csv", ".npy")
TIME_COLUMN_NAMES = ("date", "time", "timestamp", "datetime")
MISSING_POLICIES = ("error", "interpolate")
N_TIME_FEATURES = 4
RIDGE = 1e-3  # ridge of the closed-form linear baseline (per row of the normal equations)


# ----------------------------------------------------------------------------- reading

@dataclass
class Series:
    """A multivariate series: values (T, V) float64, timestamps (T,) datetime64[s] or None."""

    values: np.ndarray
    times: np.ndarray | None
    columns: list[str]
    path: str


def _pandas():
    try:
        import pandas as pd
    except ImportError as e:
        raise ImportError('reading CSV series needs pandas: pip install "largekernel[timeseries]"') from e
    return pd


def _fill_missing(values: np.ndarray, columns: list[str], policy: str, path: str,
                  first_line: int, x: np.ndarray) -> np.ndarray:
    """Raise on NaNs (policy 'error') or interpolate them linearly in time (edges: nearest value)."""
    if policy not in MISSING_POLICIES:
        raise ValueError(f"missing={policy!r}; choose one of {', '.join(MISSING_POLICIES)}")
    nan = np.isnan(values)
    if not nan.any():
        return values
    for v, name in enumerate(columns):
        rows = np.flatnonzero(nan[:, v])
        if not len(rows):
            continue
        if policy == "error":
            raise ValueError(f"{path}: column {name!r} has {len(rows)} missing value(s) (first at "
                             f"{'line' if first_line else 'row'} {rows[0] + first_line}); fill them, "
                             f"or pass --missing interpolate")
        if len(rows) == len(values):
            raise ValueError(f"{path}: column {name!r} has no values at all; drop it or choose "
                             f"columns with --targets")
        ok = ~nan[:, v]
        values[:, v] = np.interp(x, x[ok], values[ok, v])
    return values


def _check_times(times: np.ndarray, path: str, first_line: int) -> None:
    diff = np.diff(times.astype(np.int64))
    if (diff == 0).any():
        i = int(np.flatnonzero(diff == 0)[0]) + 1
        raise ValueError(f"{path}: duplicate timestamp {times[i]} (lines {i - 1 + first_line} and "
                         f"{i + first_line}); remove or aggregate duplicate rows (local clock times repeat "
                         "when daylight saving time ends: write them in UTC or with their UTC offset)")
    if (diff < 0).any():
        i = int(np.flatnonzero(diff < 0)[0]) + 1
        raise ValueError(f"{path}: timestamps are not sorted (line {i + first_line}: {times[i]} comes "
                         f"after {times[i - 1]}); sort the file by time")


def read_csv_series(path: Path, time_column: str | None, targets: list[str] | None,
                    missing: str) -> Series:
    pd = _pandas()
    try:
        df = pd.read_csv(path, skipinitialspace=True, **table_io.sniff_csv(path))
    except Exception as e:  # pandas' parser errors (empty file, ragged rows)
        raise ValueError(f"{path}: cannot read CSV: {e}") from e
    if df.empty:
        raise ValueError(f"{path}: no data rows; expected a header line and one row per time step")
    names = [str(c) for c in df.columns]
    df.columns = names
    if time_column is None:
        time_column = next((c for c in names if c.strip().lower() in TIME_COLUMN_NAMES), None)
    elif time_column not in names:
        raise ValueError(f"{path}: no column {time_column!r} (--time-column); columns: {names}")
    line0 = 2  # the first data row is line 2 of the file
    times = None
    if time_column is not None:
        raw = df[time_column]
        if raw.isna().any():
            i = int(np.flatnonzero(raw.isna().to_numpy())[0])
            raise ValueError(f"{path}: line {i + line0} has no timestamp in column {time_column!r}")
        parsed = table_io.parse_times(pd, raw, path, time_column, line0)
        times = parsed.to_numpy().astype("datetime64[s]")
        _check_times(times, str(path), line0)
    available = [c for c in names if c != time_column]
    if targets:
        unknown = [c for c in targets if c not in available]
        if unknown:
            raise ValueError(f"{path}: column(s) {unknown} not found; the series has {available}")
        columns = list(targets)
    else:
        columns = available
    if not columns:
        raise ValueError(f"{path}: no value columns besides the timestamp column {time_column!r}")
    values = np.empty((len(df), len(columns)))
    for v, c in enumerate(columns):
        num = table_io.to_numbers(pd, df[c])
        text = df[c].astype(str).str.strip()
        bad = (num.isna() & df[c].notna() & (text != "")).to_numpy()
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{path}: column {c!r} is not numeric (line {i + line0}: "
                             f"{df[c].iloc[i]!r}); remove it or choose numeric columns with --targets")
        values[:, v] = num.to_numpy(dtype=np.float64, na_value=np.nan)
    x = (times.astype(np.int64) if times is not None else np.arange(len(values))).astype(np.float64)
    values = _fill_missing(values, columns, missing, str(path), line0, x)
    if times is not None:
        times, on_grid = table_io.regular_grid(times, values, path, line0, missing)
        if len(on_grid) > len(values):  # missing steps inserted: interpolate them in time
            x = times.astype(np.int64).astype(np.float64)
            values = _fill_missing(on_grid, columns, missing, str(path), 0, x)
    return Series(values, times, columns, str(path))


def read_npy_series(path: Path, targets: list[str] | None, missing: str) -> Series:
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as e:
        raise ValueError(f"{path}: cannot read NPY array: {e}") from e
    if arr.ndim not in (1, 2) or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{path}: expected a numeric array of shape (time,) or (time, variables), "
                         f"got {arr.dtype} {arr.shape}")
    values = arr.reshape(len(arr), -1).astype(np.float64)
    names = [f"v{i}" for i in range(values.shape[1])]
    if targets:
        unknown = [c for c in targets if c not in names]
        if unknown:
            raise ValueError(f"{path}: column(s) {unknown} not found; NPY variables are named {names}")
        values = values[:, [names.index(c) for c in targets]]
        names = list(targets)
    values = _fill_missing(values, names, missing, str(path), 0, np.arange(len(values), dtype=np.float64))
    return Series(values, None, names, str(path))


def read_series(path: str | Path, time_column: str | None = None, targets: list[str] | None = None,
                missing: str = "error") -> Series:
    """A CSV (timestamp column + variable columns) or NPY (time, variables) file, checked."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; pass a CSV with a timestamp column or an NPY array")
    if path.suffix.lower() == ".npy":
        return read_npy_series(path, targets, missing)
    return read_csv_series(path, time_column, targets, missing)


# ----------------------------------------------------------------------------- features and splits

def time_features(times: np.ndarray | None, n: int | None = None) -> np.ndarray:
    """(T, 4) float32: hour of day /23, day of week /6 (Monday 0), (day of month - 1) /30 and
    (day of year - 1) /365, each minus 0.5 (Informer's encoding); zeros without timestamps."""
    if times is None:
        return np.zeros((n or 0, N_TIME_FEATURES), np.float32)
    t = times.astype("datetime64[s]")
    day = t.astype("datetime64[D]")
    hour = (t - day).astype("timedelta64[h]").astype(np.int64)
    weekday = (day.astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday
    mday = (day - day.astype("datetime64[M]")).astype(np.int64)
    yday = (day - day.astype("datetime64[Y]")).astype(np.int64)
    return np.stack([hour / 23.0, weekday / 6.0, mday / 30.0, yday / 365.0], axis=1).astype(np.float32) - 0.5


def infer_season(times: np.ndarray | None) -> int:
    """Season length of the series' grid: 60 per-minute (the hour), a day of sub-daily steps that
    divide it (24 hourly, 48 half-hourly, 96 15-min, 8 3-hourly...), 7 daily (5 for trading days
    without weekends), 52 weekly, 12 monthly, 4 quarterly (12 / months per step
    for steps of 2, 4, 6 months); 1 yearly or unknown."""
    if times is None or len(times) < 3:
        return 1
    kind, step = table_io.grid_step(times)
    day = table_io.DAY
    if kind == "months":
        return 12 // step if step < 12 else 1
    if kind == "days" or step == day:
        weekday = (times.astype("datetime64[D]").astype(np.int64) + 3) % 7
        return 7 if (weekday >= 5).any() else 5
    if step == 60:
        return 60
    if 0 < step < day and day % step == 0:
        return day // step
    if step == 7 * day:
        return 52
    return 1


def split_bounds(n: int, fractions, lookback: int, horizon: int, path: str) -> dict[str, tuple[int, int]]:
    """Chronological (start, end) rows of train/val/test: int(n*f_train), the rest, int(n*f_test)
    (the long-horizon benchmarks' rule). Val/test windows take their lookback from earlier rows."""
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6 or fractions[0] <= 0:
        raise ValueError(f"split_fractions={list(fractions)}: give 3 fractions train,val,test that "
                         f"sum to 1, e.g. 0.7,0.1,0.2")
    if n < lookback + horizon:
        raise ValueError(f"{path}: the series has {n} rows, shorter than lookback + horizon = "
                         f"{lookback} + {horizon}; use a longer series or a smaller --lookback/--horizon")
    n_train, n_test = int(n * fractions[0]), int(n * fractions[2])
    if n_train < lookback + horizon:
        raise ValueError(f"{path}: the training part ({fractions[0]:g} of {n} rows = {n_train}) is "
                         f"shorter than lookback + horizon = {lookback + horizon}; use a longer "
                         f"series, a smaller --lookback/--horizon or a larger training fraction")
    return dict(train=(0, n_train), val=(n_train, n - n_test), test=(n - n_test, n))


def window_starts(bounds: tuple[int, int], lookback: int, horizon: int, stride: int = 1) -> np.ndarray:
    """First forecast row of every window whose targets lie inside `bounds`."""
    start, end = bounds
    return np.arange(max(start, lookback), end - horizon + 1, max(1, stride), dtype=np.int64)


def fit_scaler(values: np.ndarray, n_train: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-variable mean and std (ddof 0) of the training rows; a constant variable gets std 1."""
    part = values[:n_train]
    mean, std = part.mean(0), part.std(0)
    return mean.astype(np.float32), np.where(std < 1e-8, 1.0, std).astype(np.float32)


class WindowDataset(Dataset):
    """(input (lookback, V + 4): scaled values then time features, target (horizon, V) scaled)."""

    def __init__(self, series: Series, starts: np.ndarray, lookback: int, horizon: int,
                 mean: np.ndarray, std: np.ndarray, n_train: int, season: int) -> None:
        self.series, self.starts = series, starts
        self.lookback, self.horizon, self.n_train, self.season = lookback, horizon, n_train, season
        self.marks = torch.from_numpy(time_features(series.times, len(series.values)))
        self._linear = None
        self.set_scaler(mean, std)

    def set_scaler(self, mean: np.ndarray, std: np.ndarray) -> None:
        self.mean, self.std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
        self.scaled = torch.from_numpy(((self.series.values - self.mean) / self.std).astype(np.float32))
        self._linear = None

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int):
        t = int(self.starts[i])
        x = torch.cat([self.scaled[t - self.lookback:t], self.marks[t - self.lookback:t]], dim=1)
        return x, self.scaled[t:t + self.horizon]

    # ---- baselines (in scaled units, on this dataset's windows) ---------------------------------
    def windows(self, starts: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, lookback, V) inputs and (N, horizon, V) targets, scaled."""
        starts = self.starts if starts is None else starts
        past = torch.as_tensor(starts)[:, None] + torch.arange(-self.lookback, 0)
        future = torch.as_tensor(starts)[:, None] + torch.arange(self.horizon)
        return self.scaled[past], self.scaled[future]

    def linear_weights(self) -> torch.Tensor:
        """(lookback + 1, horizon): one linear map from a variable's last `lookback` values (and 1)
        to its next `horizon` values, shared by all variables, least squares over every training
        window (stride 1). DLinear's trend/seasonal split is a reparameterisation of the same linear
        map, so its least-squares optimum is this one. Cached per dataset and scaler."""
        if self._linear is None:
            starts = window_starts((0, self.n_train), self.lookback, self.horizon)
            a = torch.zeros(self.lookback + 1, self.lookback + 1, dtype=torch.float64)
            b = torch.zeros(self.lookback + 1, self.horizon, dtype=torch.float64)
            for chunk in np.array_split(starts, max(1, len(starts) // 2048)):
                x, y = self.windows(chunk)
                x = x.transpose(1, 2).reshape(-1, self.lookback).double()
                x = torch.cat([x, torch.ones(len(x), 1, dtype=torch.float64)], dim=1)
                a += x.T @ x
                b += x.T @ y.transpose(1, 2).reshape(-1, self.horizon).double()
            rows = len(starts) * self.scaled.shape[1]
            a += RIDGE * rows * torch.eye(self.lookback + 1, dtype=torch.float64)
            self._linear = torch.linalg.solve(a, b).float()
        return self._linear

    def baselines(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Forecasts (N, horizon, V) of last-value, seasonal-naive and the linear baseline."""
        h, m = self.horizon, self.season
        last = x[:, -1:].expand(-1, h, -1)
        idx = self.lookback - m + torch.arange(h) % m
        w = self.linear_weights()
        linear = torch.einsum("nlv,lh->nhv", x, w[:-1]) + w[-1][None, :, None]
        return {"last_value": last, "seasonal_naive": x[:, idx], "linear": linear}


# ----------------------------------------------------------------------------- model

class RevIN(nn.Module):
    """Per-window normalisation over time with a learnable per-variable affine (Kim et al. 2022)."""

    def __init__(self, variables: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(variables))
        self.bias = nn.Parameter(torch.zeros(variables))

    def normalize(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x (B, L, V) -> normalised x and the (mean, std) that `denormalize` needs."""
        mean = x.mean(1, keepdim=True).detach()
        std = torch.sqrt(x.var(1, keepdim=True, unbiased=False) + self.eps).detach()
        return (x - mean) / std * self.weight + self.bias, (mean, std)

    def denormalize(self, y: torch.Tensor, stats: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        mean, std = stats
        return (y - self.bias) / (self.weight + self.eps ** 2) * std + mean


class SeriesEmbedding(nn.Module):
    """Values (B, L, V) + time features (B, L, 4) -> (B, L, D'): circular Conv1d(V -> D', k=3) over
    time plus Linear(4 -> D'), then dropout (Informer's DataEmbedding without positions)."""

    def __init__(self, variables: int, dim: int, dropout: float = 0.05) -> None:
        super().__init__()
        self.value = nn.Conv1d(variables, dim, 3, padding=1, padding_mode="circular", bias=False)
        nn.init.kaiming_normal_(self.value.weight, mode="fan_in", nonlinearity="leaky_relu")
        self.time = nn.Linear(N_TIME_FEATURES, dim, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, values: torch.Tensor, marks: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.value(values.transpose(1, 2)).transpose(1, 2) + self.time(marks))


def map_side(lookback: int, dim: int) -> int:
    """Side S of the square map holding L*D' values (zero-padded up to S*S)."""
    return math.isqrt(lookback * dim - 1) + 1


class Forecaster(nn.Module):
    """RevIN -> embedding -> (B, 1, S, S) -> UniRepLKNet (in_chans 1, pooled) -> Linear -> (B, H, V).

    Inputs and outputs are in the training scaler's units; `scaler_mean`/`scaler_std` (buffers,
    saved with the weights) convert raw values for `predict`.
    """

    def __init__(self, backbone: nn.Module, variables: int, lookback: int, horizon: int, dim: int,
                 dropout: float = 0.05) -> None:
        super().__init__()
        self.variables, self.lookback, self.horizon, self.dim = variables, lookback, horizon, dim
        self.side = map_side(lookback, dim)
        self.revin = RevIN(variables)
        self.embed = SeriesEmbedding(variables, dim, dropout)
        self.backbone = backbone
        self.head = nn.Linear(backbone.num_features, horizon * variables)
        self.register_buffer("scaler_mean", torch.zeros(variables))
        self.register_buffer("scaler_std", torch.ones(variables))

    def to_map(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, V + 4) -> the backbone's (B, 1, S, S) input and the RevIN statistics."""
        values, marks = x[..., :self.variables], x[..., self.variables:]
        values, stats = self.revin.normalize(values)
        e = self.embed(values, marks).flatten(1)
        e = F.pad(e, (0, self.side * self.side - e.shape[1]))
        return e.view(-1, 1, self.side, self.side), stats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m, stats = self.to_map(x)
        y = self.head(self.backbone(m)).view(-1, self.horizon, self.variables)
        return self.revin.denormalize(y, stats)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enable)

    def no_weight_decay(self) -> set[str]:
        return {"revin.weight", "revin.bias"}


# ----------------------------------------------------------------------------- plotting

def plot_forecast(path: Path, history_t, history: np.ndarray, future_t, forecast: np.ndarray,
                  columns: list[str], truth: np.ndarray | None = None, max_panels: int = 8) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = min(len(columns), max_panels)
    fig, axes = plt.subplots(k, 1, figsize=(9, 2.2 * k), sharex=True, squeeze=False)
    for v, ax in enumerate(axes[:, 0]):
        ax.plot(history_t, history[:, v], color="0.3", lw=1, label="history")
        if truth is not None:
            ax.plot(future_t, truth[:, v], color="tab:green", lw=1, label="truth")
        ax.plot(future_t, forecast[:, v], color="tab:red", lw=1.5, label="forecast")
        ax.set_ylabel(columns[v])
    axes[0, 0].legend(loc="upper left", fontsize=8)
    title = path.name if len(columns) <= max_panels else f"{path.name} (first {max_panels} of {len(columns)})"
    axes[0, 0].set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- modality

class ForecastMetrics:
    """The forecasting task's metrics: MSE/MAE of the forecasts and, on the same windows, of the
    last-value, seasonal-naive and linear baselines (all in the scaler's units)."""

    def __init__(self, dataset: WindowDataset) -> None:
        self.dataset = dataset
        self.preds: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []

    def update(self, inputs: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        self.preds.append(outputs)
        self.targets.append(targets.float())

    def compute(self) -> dict:
        pred, y = torch.cat(self.preds), torch.cat(self.targets)
        errors = regression_errors(pred, y)
        metrics = dict(loss=errors["mse"], **errors, n=len(y), season=self.dataset.season)
        x, y_windows = self.dataset.windows()
        for name, p in self.dataset.baselines(x).items():
            for key, value in regression_errors(p, y_windows).items():
                metrics[f"{name}_{key}"] = value
        metrics["mse_per_variable"] = ((pred - y) ** 2).mean((0, 1)).tolist()
        return metrics


# ----------------------------------------------------------------------------- command line

def _make_series(args) -> int:
    """Generated data: hourly from 2024-01-01, variable v = level + trend + daily cycle (weaker at
    weekends) + weekly cycle + AR(1) noise + half of variable v-1 three hours earlier."""
    from .series_data import GOOG_COLUMNS, goog_series, make_series, write_series_csv

    if args.goog:
        times, values = goog_series()
        columns = list(GOOG_COLUMNS)
    else:
        times, values = make_series(args.length, args.variables, args.seed)
        columns = [f"s{v}" for v in range(args.variables)]
    path = write_series_csv(args.output, times, values, columns)
    sys.stdout.write(f"wrote {path}: {len(values)} rows x {len(columns)} variables "
                     f"({times[0]} .. {times[-1]})\n")
    return 0


SERIES = Command("series", "write a multivariate hourly series CSV (daily + weekly seasons, trend, "
                           "coupling, noise), or the real GOOG daily prices with --goog", _make_series, [
    arg("output", metavar="OUT.csv", help="CSV to write: a date column and one column per variable"),
    arg("--length", type=positive_int, default=2000, metavar="N", help="time steps (default 2000)"),
    arg("--variables", type=positive_int, default=3, metavar="V", help="variables (default 3)"),
    RANDOM_SEED,
    arg("--goog", action="store_true", help="write matplotlib's bundled GOOG daily open/high/low/close "
        "(2004-08-19 .. 2008-10-14, 1047 trading days) instead"),
], _make_series.__doc__)


@dataclass
class ForecastOptions:
    """The forecasting plug-in's options: windows, columns, split and embedding."""

    lookback: int = option(96, "input steps L per window")
    horizon: int = option(24, "forecast steps H")
    time_column: str | None = option(None, "the timestamp column (default: the first named date/time/timestamp/datetime)")
    targets: list[str] | None = option(None, "variable columns to forecast (default: every other column)")
    split_fractions: tuple[float, float, float] = option((0.7, 0.1, 0.2), "chronological train/val/test fractions, as a,b,c")
    missing: str = option("error", "missing values: error, or interpolate (linear in time)")
    embed_dim: int = option(64, "embedding width D' per step; the L x D' embedding is zero-padded to a square map")
    window_stride: int = option(1, "step between training windows")
    season: int | None = option(None, "seasonal-naive period (default: from the timestamps, 24 hourly, 7 daily)")


@register_plugin
class TimeSeriesModality(Plugin):
    """Multivariate forecasting: CSV/NPY series, RevIN + embedding map + UniRepLKNet, MSE/MAE."""

    name = "timeseries"
    options = ForecastOptions
    data_generators = (SERIES,)
    predict_arguments = (
        arg("--horizon", type=positive_int, default=None, metavar="H",
            help="time series: steps to forecast (default: the trained horizon)"),
        arg("--backtest", action="store_true",
            help="time series: forecast the last H known steps instead of the future, and plot and "
                 "score them against the truth"),
    )
    extensions = EXTENSIONS
    metric = "mse"
    higher_is_better = False

    def __init__(self) -> None:
        self.scaler: tuple[np.ndarray, np.ndarray] | None = None  # set by datasets(), read by build_model

    def _read(self, path, cfg: TrainConfig, targets) -> Series:
        return read_series(path, cfg.time_column, targets, cfg.missing)

    def _check(self, cfg: TrainConfig) -> None:
        for name in ("lookback", "horizon", "embed_dim", "window_stride"):
            if int(getattr(cfg, name)) < 1:
                raise ValueError(f"{name}={getattr(cfg, name)} must be >= 1")

    def _dataset(self, series: Series, cfg: TrainConfig, part: str, stride: int = 1) -> WindowDataset | None:
        bounds = split_bounds(len(series.values), cfg.split_fractions, cfg.lookback, cfg.horizon,
                              series.path)
        starts = window_starts(bounds[part], cfg.lookback, cfg.horizon, stride)
        if not len(starts):
            return None
        mean, std = fit_scaler(series.values, bounds["train"][1])
        season = cfg.season or infer_season(series.times)
        if season > cfg.lookback:
            log.warning("season %d is longer than the lookback %d: seasonal naive repeats the last "
                        "%d steps", season, cfg.lookback, cfg.lookback)
            season = cfg.lookback
        return WindowDataset(series, starts, cfg.lookback, cfg.horizon, mean, std,
                             bounds["train"][1], season)

    def datasets(self, cfg: TrainConfig, train: bool = True) -> DataBundle:
        """Train/val windows of the configured split; with train=False the test part (for `eval`)."""
        self._check(cfg)
        if not train:
            path = cfg.val or cfg.train
            if not path:
                raise ValueError("no series to evaluate: pass --data SERIES.csv")
            series = self._read(path, cfg, cfg.classes)
            test = self._dataset(series, cfg, "test")
            if test is None:
                raise ValueError(f"{path}: the test part ({cfg.split_fractions[2]:g} of the rows) is "
                                 f"shorter than the horizon {cfg.horizon}; nothing to evaluate")
            return DataBundle(None, test, series.columns)
        if not cfg.train:
            raise ValueError("no training data: set --data SERIES.csv (a timestamp column and one "
                             "column per variable) or an NPY array (time, variables)")
        series = self._read(cfg.train, cfg, cfg.targets or cfg.classes)
        if cfg.val:
            raise ValueError("time series use one file split chronologically (--split-fractions); "
                             "do not pass --val")
        data = self._dataset(series, cfg, "train", cfg.window_stride)
        self.scaler = (data.mean, data.std)
        log.info("%s: %d rows x %d variables, %d training windows, season %d", series.path,
                 len(series.values), len(series.columns), len(data), data.season)
        return DataBundle(data, self._dataset(series, cfg, "val"), series.columns)

    def example_input(self, cfg: TrainConfig, batch: int = 2, generator: torch.Generator | None = None
                      ) -> torch.Tensor:
        """Random windows (batch, lookback, variables + 4): values, then time features in [-0.5, 0.5]."""
        variables = len(cfg.classes or []) or 1
        values = torch.randn(batch, cfg.lookback, variables, generator=generator)
        marks = torch.rand(batch, cfg.lookback, 4, generator=generator) - 0.5
        return torch.cat([values, marks], dim=-1)

    def input_contract(self, cfg: TrainConfig) -> dict[str, str]:
        variables = len(cfg.classes or []) or 1
        return dict(input=f"float32 N x {cfg.lookback} x {variables + N_TIME_FEATURES}: {cfg.lookback} "
                          f"steps of the {variables} variable(s) {cfg.classes}, then {N_TIME_FEATURES} "
                          "time features (hour of day, day of week, day of month, day of year, each "
                          "in [-0.5, 0.5]; 0 without timestamps)",
                    preprocessing="standardise each variable with the training scaler stored in the "
                                  "weights (scaler_mean, scaler_std)",
                    output=f"N x {cfg.horizon} x {variables} forecast in the same standardised units: "
                           "multiply by scaler_std and add scaler_mean")

    def load(self, path, cfg: TrainConfig) -> torch.Tensor:
        raise ValueError(f"{path}: time series are forecast with `largekernel predict` (a whole file), "
                         "not classified")

    def build_model(self, cfg: TrainConfig, num_classes: int) -> nn.Module:
        self._check(cfg)
        backbone = create_model(cfg.model, pretrained=cfg.pretrained, num_classes=0, in_chans=1,
                                drop_path_rate=cfg.drop_path, **cfg.model_kwargs)
        model = Forecaster(backbone, num_classes, cfg.lookback, cfg.horizon, cfg.embed_dim)
        if self.scaler is not None:
            model.scaler_mean.copy_(torch.as_tensor(self.scaler[0]))
            model.scaler_std.copy_(torch.as_tensor(self.scaler[1]))
        return model

    # ---- training ------------------------------------------------------------------------------
    def prepare_batch(self, x, y, num_classes, cfg, gen):
        return x.float(), y.float()

    def loss(self, output: torch.Tensor, target: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
        return F.mse_loss(output.float(), target)

    # ---- evaluation ------------------------------------------------------------------------------
    def task_metrics(self, cfg: TrainConfig, classes: list[str], dataset: WindowDataset) -> ForecastMetrics:
        return ForecastMetrics(dataset)

    def evaluate(self, model: nn.Module, dataset: WindowDataset, cfg: TrainConfig, classes: list[str],
                 device: torch.device, batch_size: int | None = None) -> dict:
        """MSE/MAE (scaled units, the benchmarks' convention) of the model and the baselines, in
        the units of the checkpoint's scaler."""
        if hasattr(model, "scaler_mean"):
            mean, std = model.scaler_mean.cpu().numpy(), model.scaler_std.cpu().numpy()
            if not (np.array_equal(mean, dataset.mean) and np.array_equal(std, dataset.std)):
                dataset.set_scaler(mean, std)
        return super().evaluate(model, dataset, cfg, classes, device, batch_size)

    def report(self, metrics: dict, classes: list[str], out: Path) -> str:
        from ..engine.table import format_table

        rows = [["UniRepLKNet", f"{metrics['mse']:.4f}", f"{metrics['mae']:.4f}"]]
        names = {"linear": "linear (DLinear-style)",
                 "seasonal_naive": f"seasonal naive (m={metrics['season']})", "last_value": "last value"}
        rows += [[label, f"{metrics[k + '_mse']:.4f}", f"{metrics[k + '_mae']:.4f}"]
                 for k, label in names.items()]
        text = (f"test part of the series: {metrics['n']} windows, {len(classes)} variables; MSE/MAE in "
                f"units of the training scaler (per-variable standardisation)\n")
        text += format_table(["method", "MSE", "MAE"], rows, right=(1, 2))
        if len(classes) > 1:
            text += "model MSE per variable: " + ", ".join(
                f"{c} {v:.4f}" for c, v in zip(classes, metrics["mse_per_variable"])) + "\n"
        return text

    # ---- prediction ------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, trained, paths, topk: int = 5, options: dict | None = None) -> list[dict]:
        """Forecast the steps after the end of each file (or, with `backtest`, its last H known
        steps, plotted against the truth): `<name>.forecast.csv` and `<name>.forecast.png`."""
        options = options or {}
        results = []
        for p in paths:
            try:
                results.append(self._forecast_file(trained, Path(p), options))
            except (ValueError, FileNotFoundError) as e:
                log.error("%s", e)
                results.append(dict(path=str(p), error=str(e)))
        return results

    def _forecast_file(self, trained, path: Path, options: dict) -> dict:
        cfg, model = trained.cfg, trained.model.eval()
        horizon = options.get("horizon") or cfg.horizon
        backtest = bool(options.get("backtest"))
        series = self._read(path, cfg, trained.classes)
        n, need = len(series.values), cfg.lookback + (horizon if backtest else 0)
        if n < need:
            raise ValueError(f"{path}: {n} rows; forecasting needs at least {need} (lookback "
                             f"{cfg.lookback}{f' + horizon {horizon} for --backtest' if backtest else ''})")
        end = n - horizon if backtest else n
        times = series.times
        if times is not None:
            future_t = table_io.future_times(times[:end], horizon)
            if backtest:
                future_t = times[end:end + horizon]
        else:
            future_t = np.arange(end, end + horizon)
        mean, std = model.scaler_mean.numpy(), model.scaler_std.numpy()
        hist = torch.from_numpy(((series.values[:end] - mean) / std).astype(np.float32))
        marks_all = np.concatenate([time_features(times[:end], end) if times is not None
                                    else np.zeros((end, N_TIME_FEATURES), np.float32),
                                    time_features(future_t if times is not None else None, horizon)])
        marks_all = torch.from_numpy(marks_all)
        out = []
        done = 0
        while done < horizon:  # autoregressive when asked for more than the trained horizon
            t = end + done
            window = torch.cat([hist[-cfg.lookback:], marks_all[t - cfg.lookback:t]], dim=1)
            y = model(window[None])[0][: horizon - done]
            out.append(y)
            hist = torch.cat([hist, y])
            done += len(y)
        forecast = torch.cat(out).numpy() * std + mean
        out_dir = Path(options["output"]) if options.get("output") else path.parent
        out_dir.mkdir(parents=True, exist_ok=True)
        csv_path = out_dir / f"{path.stem}.forecast.csv"
        truth = series.values[end:end + horizon] if backtest else None
        with open(csv_path, "w") as f:
            head = ["date" if times is not None else "step", *series.columns]
            if truth is not None:
                head += [f"{c}_true" for c in series.columns]
            f.write(",".join(head) + "\n")
            for i in range(horizon):
                stamp = str(future_t[i]).replace("T", " ")
                row = [f"{v:.6g}" for v in forecast[i]]
                row += [f"{v:.6g}" for v in truth[i]] if truth is not None else []
                f.write(",".join([stamp, *row]) + "\n")
        written = [str(csv_path)]
        summary = f"{horizon}-step forecast of {len(series.columns)} variable(s)"
        result = dict(path=str(path), horizon=horizon)
        if truth is not None:
            scaled_err = (forecast - truth) / std
            result.update(mse=float((scaled_err ** 2).mean()), mae=float(np.abs(scaled_err).mean()))
            summary += f" (backtest: MSE {result['mse']:.4f}, MAE {result['mae']:.4f} in scaled units)"
        try:
            shown = min(end, max(cfg.lookback, 3 * horizon))
            hist_t = times[end - shown:end] if times is not None else np.arange(end - shown, end)
            written.append(str(plot_forecast(out_dir / f"{path.stem}.forecast.png", hist_t,
                                             series.values[end - shown:end], future_t, forecast,
                                             series.columns, truth)))
        except ImportError:
            log.info("matplotlib not installed: no forecast plot")
        result.update(summary=summary, written=written, forecast=forecast.tolist())
        return result
