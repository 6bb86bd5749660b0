"""Series for tests and demos: a generated multi-seasonal hourly CSV, and a real series read at run
time from matplotlib's bundled sample data (GOOG daily prices, 2004-08-19 .. 2008-10-14)."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

GOOG_COLUMNS = ("open", "high", "low", "close")


def make_series(length: int = 2000, variables: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(timestamps, values (length, variables)): hourly from Monday 2024-01-01 00:00.

    Each variable: a level and trend, a daily cycle whose amplitude drops at weekends, a weekly cycle,
    AR(1) noise, and (from the second variable on) a 3-hour-lagged copy of the previous variable.
    The weekend effect spans more than a short lookback; a model that reads the time features can
    use it, a linear map of the last values cannot.
    """
    if length < 2 or variables < 1:
        raise ValueError(f"length={length} and variables={variables}: need length >= 2 and variables >= 1")
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    hour, day = t % 24, (t // 24) % 7
    weekend = np.where(day >= 5, 0.25, 1.0)
    values = np.empty((length, variables))
    for v in range(variables):
        level, slope = rng.uniform(-2, 2), rng.uniform(-1, 1)
        amp, phase = rng.uniform(1.0, 2.0), rng.uniform(0, 2 * np.pi)
        daily = amp * weekend * np.sin(2 * np.pi * hour / 24 + phase)
        weekly = rng.uniform(0.3, 0.8) * np.sin(2 * np.pi * t / 168 + rng.uniform(0, 2 * np.pi))
        noise = np.empty(length)
        e = rng.normal(0, 0.15, length)
        noise[0] = e[0]
        for i in range(1, length):
            noise[i] = 0.6 * noise[i - 1] + e[i]
        values[:, v] = level + slope * t / length + daily + weekly + noise
        if v > 0:
            values[3:, v] += 0.5 * values[:-3, v - 1]
    times = np.datetime64("2024-01-01T00:00:00", "s") + t.astype("timedelta64[h]")
    return times, values


def goog_series() -> tuple[np.ndarray, np.ndarray]:
    """Daily GOOG open/high/low/close from matplotlib's sample data (Yahoo Finance via matplotlib,
    matplotlib license); trading days only."""
    try:
        from matplotlib import cbook
    except ImportError as e:
        raise ImportError("the GOOG sample series comes with matplotlib: "
                          'pip install "largekernel[timeseries]"') from e
    data = cbook.get_sample_data("goog.npz")["price_data"]
    times = data["date"].astype("datetime64[s]")
    return times, np.stack([data[c] for c in GOOG_COLUMNS], axis=1).astype(np.float64)


def write_series_csv(path: str | Path, times: np.ndarray, values: np.ndarray,
                     columns: list[str] | tuple[str, ...]) -> Path:
    """A CSV with a `date` column ('YYYY-MM-DD HH:MM:SS') and one column per variable."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["date", *columns])
        for t, row in zip(times, values):
            w.writerow([str(t).replace("T", " "), *(f"{x:.6g}" for x in row)])
    return path
