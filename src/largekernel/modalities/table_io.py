"""CSV dialects, time zones and the time grid of a series file: what pandas needs told, checked here.

pandas reads the rows; this module decides how: the separator (`,` `;` tab `|`) and a decimal comma
are detected from the first lines (spreadsheets in many locales write `1,5;2,25`), timestamps with
UTC offsets (daylight-saving changes give mixed offsets, which pandas refuses without `utc=True`)
become UTC, and the timestamps are checked to lie on one grid: a fixed step (minutes to weeks),
calendar months, quarters or years, or trading days (weekdays; holidays may be absent). Steps missing
from the grid are an error, or with `--missing interpolate` rows inserted and interpolated;
timestamps off any grid are an error that says so.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np

SEPARATORS = (";", "\t", "|", ",")  # preference when several split every line the same way
_DECIMAL_COMMA = re.compile(r"^[+-]?\d+,\d+$")
_ZONE = r"(?:Z|[+-]\d\d:?\d\d|\s?UTC|\s?GMT)$"
DAY = 86400
CALENDAR_STEPS = {1: "monthly", 2: "two-monthly", 3: "quarterly", 4: "four-monthly", 6: "half-yearly",
                  12: "yearly"}  # months per step: the divisors of a year


def sniff_csv(path: str | Path, sample_lines: int = 20) -> dict:
    """`sep` and `decimal` arguments of pandas.read_csv for this file, from its first lines."""
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = []
        for line in f:
            if line.strip():
                lines.append(line.rstrip("\r\n"))
            if len(lines) >= sample_lines:
                break
    sep = ","
    for candidate in SEPARATORS:
        counts = {line.count(candidate) for line in lines}
        if len(counts) == 1 and counts.pop() > 0:
            sep = candidate
            break
    decimal = "."
    if sep != "," and any(_DECIMAL_COMMA.match(field.strip()) for line in lines[1:]
                          for field in line.split(sep)):
        decimal = ","
    return dict(sep=sep, decimal=decimal)


def parse_times(pd, raw, path: str | Path, column: str, first_line: int):
    """Parsed timestamps (pandas Series, naive, UTC when the file gives offsets); ValueError naming
    the line otherwise."""
    text = raw.astype(str).str.strip()
    zoned = text.str.contains(_ZONE, regex=True).to_numpy()
    if zoned.any() and not zoned.all():
        i = int(np.flatnonzero(zoned != zoned[0])[0])
        raise ValueError(f"{path}: line {i + first_line}: timestamp {text.iloc[i]!r} "
                         f"{'has no' if zoned[0] else 'has a'} UTC offset unlike line {first_line}; "
                         "give every timestamp an offset, or none")
    dotted = bool(text.str.match(r"\d{1,2}\.\d{1,2}\.\d{2,4}").all())  # 31.01.2024: day first
    with warnings.catch_warnings():  # pandas' note that it inferred a day-first format itself
        warnings.filterwarnings("ignore", message="Parsing dates in", category=UserWarning)
        parsed = pd.to_datetime(text, errors="coerce", utc=bool(zoned.any()), dayfirst=dotted)
        if parsed.isna().any() and not dotted:  # 31/01/2024: month-first parsing fails, day-first not
            day_first = pd.to_datetime(text, errors="coerce", utc=bool(zoned.any()), dayfirst=True)
            parsed = day_first if not day_first.isna().any() else parsed
    if parsed.isna().any():
        i = int(np.flatnonzero(parsed.isna().to_numpy())[0])
        raise ValueError(f"{path}: line {i + first_line}: cannot parse timestamp {raw.iloc[i]!r} in "
                         f"column {column!r}; use ISO dates such as 2024-01-31 13:00")
    fine = (parsed.dt.microsecond != 0) | (parsed.dt.nanosecond != 0)
    if fine.any():
        i = int(np.flatnonzero(fine.to_numpy())[0])
        raise ValueError(f"{path}: line {i + first_line}: timestamp {raw.iloc[i]!r} has a fraction of a "
                         "second; steps below one second are not supported: resample to whole seconds "
                         "(e.g. pandas: df.resample('1s').mean())")
    if getattr(parsed.dt, "tz", None) is not None:
        parsed = parsed.dt.tz_convert("UTC").dt.tz_localize(None)
    return parsed


def to_numbers(pd, column):
    """A column as float64 (NaN for empty cells); quoted decimal-comma text ("1,5" in a
    comma-separated file) is read as numbers too."""
    num = pd.to_numeric(column, errors="coerce")
    text = column.astype(str).str.strip()
    failed = num.isna() & column.notna() & (text != "")
    if failed.any() and text[failed].str.match(_DECIMAL_COMMA.pattern).all():
        num = num.where(~failed, pd.to_numeric(text.str.replace(",", ".", regex=False), errors="coerce"))
    return num


def _months(times: np.ndarray) -> np.ndarray:
    return times.astype("datetime64[M]").astype(np.int64)


def _day_of_month(times: np.ndarray) -> np.ndarray:
    return (times.astype("datetime64[D]") - times.astype("datetime64[M]")).astype(np.int64) + 1


def _month_end(times: np.ndarray) -> np.ndarray:
    days = times.astype("datetime64[D]")
    return (days + 1).astype("datetime64[M]") != days.astype("datetime64[M]")


def _month_dates(months: np.ndarray, like: np.datetime64) -> np.ndarray:
    """Timestamps in `months` at `like`'s day of the month (its month end, when it is one) and time."""
    day = int(_day_of_month(np.array([like]))[0])
    tod = like - like.astype("datetime64[D]")
    if _month_end(np.array([like]))[0]:
        dates = (months + 1).astype("datetime64[D]") - np.timedelta64(1, "D")
    else:
        dates = months.astype("datetime64[D]") + np.timedelta64(day - 1, "D")
    return (dates.astype("datetime64[s]") + tod).astype("datetime64[s]")


def grid_step(times: np.ndarray) -> tuple[str, int]:
    """("months", k) for monthly/quarterly/yearly series, ("days", 1) for trading days, else
    ("seconds", median step)."""
    step = int(np.median(np.diff(times.astype(np.int64))))
    if step >= 27 * DAY:
        k = int(np.median(np.diff(_months(times))))
        if k in CALENDAR_STEPS or (k > 0 and k % 12 == 0):
            return "months", k
    if step == DAY:
        weekday = (times.astype("datetime64[D]").astype(np.int64) + 3) % 7
        if not (weekday >= 5).any() and (np.diff(times.astype(np.int64)) > DAY).any():
            return "days", 1
    return "seconds", step


def _describe(seconds: int) -> str:
    for unit, size in (("week", 7 * DAY), ("day", DAY), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0:
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return f"{seconds} s"


def regular_grid(times: np.ndarray, values: np.ndarray, path: str | Path, first_line: int,
                 missing: str) -> tuple[np.ndarray, np.ndarray]:
    """(times, values) on a regular grid: unchanged when already so; steps missing from the grid
    inserted as NaN rows when `missing` is 'interpolate', else a ValueError; timestamps off any grid
    a ValueError saying so."""
    if len(times) < 3:
        return times, values
    kind, step = grid_step(times)
    if kind == "days":  # trading days: weekends and holidays are absent by design
        return times, values
    if kind == "months":
        dom, tod = _day_of_month(times), times - times.astype("datetime64[D]")
        ends = _month_end(times)
        same_day = (dom == dom[0]) | (ends & ends[0])  # the same day, or month ends
        position = (_months(times) - _months(times[:1])).astype(np.float64) / step
        position[~same_day | (tod != tod[0])] += 0.5  # off the grid
        unit = f"{CALENDAR_STEPS.get(step, f'{step // 12}-yearly')} period"
    else:
        position = (times.astype(np.int64) - times[0].astype(np.int64)).astype(np.float64) / step
        unit = f"step of {_describe(step)}"
    off = np.flatnonzero(position != np.round(position))
    if len(off):
        i = int(off[0])
        raise ValueError(f"{path}: irregular timestamps: line {i + first_line} ({times[i]}) is not on the "
                         f"grid of one {unit} from line {first_line} ({times[0]}); resample the data to a "
                         f"fixed step first (e.g. pandas: df.resample('1h').mean())")
    index = np.round(position).astype(np.int64)
    gaps = np.flatnonzero(np.diff(index) > 1)
    if not len(gaps):
        return times, values
    absent = int(index[-1] + 1 - len(index))
    i = int(gaps[0])
    if missing != "interpolate":
        raise ValueError(f"{path}: {absent} time step(s) missing from the regular grid (one {unit}); the "
                         f"first gap is between line {i + first_line} ({times[i]}) and line "
                         f"{i + 1 + first_line} ({times[i + 1]}); add the rows, or pass --missing "
                         "interpolate to insert them and interpolate their values")
    full = np.full((index[-1] + 1, values.shape[1]), np.nan)
    full[index] = values
    if kind == "months":
        grid = _month_dates(times[:1].astype("datetime64[M]") + np.arange(index[-1] + 1) * step, times[0])
    else:
        grid = times[0] + np.arange(index[-1] + 1) * np.timedelta64(step, "s")
    grid[index] = times
    return grid.astype("datetime64[s]"), full


def future_times(times: np.ndarray, horizon: int) -> np.ndarray:
    """The `horizon` timestamps after the last one, on the series' grid (calendar months for
    monthly/quarterly/yearly series, weekdays for trading days)."""
    if len(times) >= 3:
        kind, step = grid_step(times)
    else:
        kind, step = "seconds", int(np.diff(times.astype(np.int64))[0]) if len(times) == 2 else 1
    last = times[-1]
    if kind == "months":
        return _month_dates(last.astype("datetime64[M]") + np.arange(1, horizon + 1) * step, last)
    if kind == "days":
        days = np.busday_offset(last.astype("datetime64[D]"), np.arange(1, horizon + 1), roll="forward")
        return days.astype("datetime64[s]") + (last - last.astype("datetime64[D]"))
    return (last + np.arange(1, horizon + 1) * np.timedelta64(step, "s")).astype("datetime64[s]")
