"""Series files as spreadsheets, loggers and statistics offices write them: dialects, zones, frequencies."""
from __future__ import annotations

import numpy as np
import pytest

pd = pytest.importorskip("pandas")

from largekernel.modalities.series_data import make_series, write_series_csv  # noqa: E402
from largekernel.modalities.table_io import future_times, sniff_csv  # noqa: E402
from largekernel.modalities.timeseries import infer_season, read_series  # noqa: E402

from clitools import run_cli  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def frame_csv(path, index, values=None) -> str:
    values = np.arange(len(index), dtype=float) if values is None else values
    pd.DataFrame({"date": index, "y": values}).to_csv(path, index=False)
    return path


# ---------------------------------------------------------------------------------------- dialects

def test_semicolons_and_decimal_commas(tmp_path):
    """A German-locale spreadsheet export: `;` between fields, `,` before decimals."""
    p = tmp_path / "de.csv"
    pd.DataFrame({"Datum": pd.date_range("2024-01-01", periods=4, freq="h"), "Temp": [1.5, -2.25, 3.0, 4.125],
                  "Druck": [1013.0, 1012.5, 1011.0, 1010.75]}).to_csv(p, sep=";", decimal=",", index=False)
    assert sniff_csv(p) == dict(sep=";", decimal=",")
    s = read_series(p, time_column="Datum")
    assert s.columns == ["Temp", "Druck"]
    assert s.values.tolist() == [[1.5, 1013.0], [-2.25, 1012.5], [3.0, 1011.0], [4.125, 1010.75]]


@pytest.mark.parametrize("sep", ["\t", "|", ";"])
def test_other_separators_with_decimal_points(tmp_path, sep):
    p = tmp_path / "s.csv"
    p.write_text(sep.join(["date", "a", "b"]) + "\n"
                 + "".join(sep.join([f"2024-01-01 0{h}:00", f"{h}.5", f"{-h}"]) + "\n" for h in range(4)))
    assert sniff_csv(p) == dict(sep=sep, decimal=".")
    assert read_series(p).values.tolist() == [[h + 0.5, -h] for h in range(4)]


def test_quoted_decimal_commas_in_a_comma_separated_file(tmp_path):
    p = tmp_path / "q.csv"
    p.write_text('date,a,b\n2024-01-01 00:00,"1,5",2\n2024-01-01 01:00,"-0,25",3\n2024-01-01 02:00,,4\n')
    assert sniff_csv(p) == dict(sep=",", decimal=".")
    assert read_series(p, missing="interpolate").values.tolist() == [[1.5, 2], [-0.25, 3], [-0.25, 4]]


@pytest.mark.parametrize("dates", [
    ["01.02.2024", "02.02.2024", "03.02.2024"],  # dotted: day first by convention
    ["30/01/2024", "31/01/2024", "01/02/2024"],  # month-first parsing fails on the 30th
])
def test_day_first_dates(tmp_path, dates):
    p = tmp_path / "d.csv"
    p.write_text("Datum;Wert\n" + "".join(f"{d};{i},5\n" for i, d in enumerate(dates)))
    s = read_series(p, time_column="Datum")
    assert s.values[:, 0].tolist() == [0.5, 1.5, 2.5]
    first = np.datetime64("2024-02-01" if dates[0].startswith("01.") else "2024-01-30", "s")
    assert s.times.tolist() == [first + np.timedelta64(i, "D") for i in range(3)]


# ---------------------------------------------------------------------------------------- time zones

def test_utc_offsets_across_a_daylight_saving_change_become_utc(tmp_path):
    """Berlin's clocks go back at 03:00 CEST on 2024-10-27: local 02:00 happens twice, with different
    offsets; in UTC the hours are regular."""
    local = pd.date_range("2024-10-27 00:00", periods=5, freq="h", tz="UTC").tz_convert("Europe/Berlin")
    p = frame_csv(tmp_path / "dst.csv", [t.isoformat() for t in local])
    assert "+02:00" in p.read_text() and "+01:00" in p.read_text()
    s = read_series(p)
    assert s.times.tolist() == list(np.datetime64("2024-10-27T00:00", "s")
                                    + np.arange(5).astype("timedelta64[h]"))


def test_naive_local_times_over_daylight_saving_changes_are_named(tmp_path):
    fall = frame_csv(tmp_path / "fall.csv", ["2024-10-27 01:00", "2024-10-27 02:00", "2024-10-27 02:00",
                                             "2024-10-27 03:00"])
    with pytest.raises(ValueError, match=r"duplicate timestamp .*\(lines 3 and 4\).*daylight saving time "
                                         r"ends: write them in UTC or with their UTC offset"):
        read_series(fall)
    spring = frame_csv(tmp_path / "spring.csv", ["2024-03-31 00:00", "2024-03-31 01:00", "2024-03-31 03:00",
                                                 "2024-03-31 04:00"])
    with pytest.raises(ValueError, match=r"1 time step\(s\) missing from the regular grid \(one step of "
                                         r"1 hour\); the first gap is between line 3 .* and line 4"):
        read_series(spring)
    s = read_series(spring, missing="interpolate")
    assert s.values[:, 0].tolist() == [0, 1, 1.5, 2, 3]


def test_offsets_on_some_timestamps_only_are_named(tmp_path):
    p = frame_csv(tmp_path / "mixed.csv", ["2024-01-01 00:00+01:00", "2024-01-01 01:00", "2024-01-01 02:00"])
    with pytest.raises(ValueError, match=r"mixed\.csv: line 3: timestamp '2024-01-01 01:00' has no UTC "
                                         r"offset unlike line 2"):
        read_series(p)


# ---------------------------------------------------------------------------------------- frequencies

@pytest.mark.parametrize("freq, season", [
    ("min", 60), ("5min", 288), ("15min", 96), ("30min", 48), ("h", 24), ("3h", 8), ("6h", 4),
    ("D", 7), ("W-SUN", 52), ("MS", 12), ("ME", 12), ("QS", 4), ("QE-DEC", 4), ("QS-FEB", 4),
    ("YS", 1), ("YE", 1), ("2MS", 6), ("6MS", 2), ("2YS", 1),
])
def test_frequencies_read_regular_with_their_season(tmp_path, freq, season):
    index = pd.date_range("2019-12-31" if freq.startswith(("ME", "QE", "YE")) else "2020-01-01",
                          periods=30, freq=freq)
    s = read_series(frame_csv(tmp_path / "s.csv", index))
    assert len(s.values) == 30 and infer_season(s.times) == season


def test_business_days_with_holidays_are_trading_days(tmp_path):
    index = pd.bdate_range("2024-12-16", periods=15).drop(pd.Timestamp("2024-12-25"))
    s = read_series(frame_csv(tmp_path / "b.csv", index))
    assert len(s.values) == 14 and infer_season(s.times) == 5
    assert future_times(s.times, 3).tolist() == [np.datetime64(d, "s") for d in
                                                 ("2025-01-06", "2025-01-07", "2025-01-08")]


@pytest.mark.parametrize("freq, expected", [
    ("QS", ["2027-07-01", "2027-10-01", "2028-01-01"]),
    ("ME", ["2022-06-30", "2022-07-31", "2022-08-31"]),
    ("YS", ["2050-01-01", "2051-01-01", "2052-01-01"]),
    ("W-MON", ["2020-08-03", "2020-08-10", "2020-08-17"]),
])
def test_forecast_dates_follow_the_calendar(freq, expected):
    start = "2019-12-31" if freq == "ME" else "2020-01-01"
    times = pd.date_range(start, periods=30, freq=freq).to_numpy().astype("datetime64[s]")
    assert future_times(times, 3).tolist() == [np.datetime64(d, "s") for d in expected]


def test_calendar_gaps_error_or_are_inserted(tmp_path):
    index = pd.date_range("2020-01-01", periods=8, freq="QS").delete(3)  # 2020-10-01 absent
    p = frame_csv(tmp_path / "q.csv", index, np.array([0, 1, 2, 4, 5, 6, 7], dtype=float))
    with pytest.raises(ValueError, match=r"1 time step\(s\) missing from the regular grid \(one quarterly "
                                         r"period\); the first gap is between line 4 \(2020-07-01T00:00:00\)"):
        read_series(p)
    s = read_series(p, missing="interpolate")
    assert s.values[:, 0].tolist() == list(range(8))
    assert s.times[3] == np.datetime64("2020-10-01", "s") and infer_season(s.times) == 4


def test_sub_second_timestamps_are_named(tmp_path):
    p = frame_csv(tmp_path / "fast.csv", ["2024-01-01 00:00:00.00", "2024-01-01 00:00:00.01",
                                          "2024-01-01 00:00:00.02"])
    with pytest.raises(ValueError, match=r"fast\.csv: line 3: timestamp '2024-01-01 00:00:00.01' has a "
                                         r"fraction of a second; steps below one second are not supported"):
        read_series(p)


def test_irregular_timestamps_are_named(tmp_path):
    p = frame_csv(tmp_path / "irr.csv", ["2024-01-01 00:00", "2024-01-01 01:00", "2024-01-01 01:37",
                                         "2024-01-01 03:00", "2024-01-01 04:00"])
    with pytest.raises(ValueError, match=r"irr\.csv: irregular timestamps: line 4 \(2024-01-01T01:37:00\) is "
                                         r"not on the grid of one step of 1 hour from line 2.*resample"):
        read_series(p, missing="interpolate")


# ---------------------------------------------------------------------------------------- CLI

def test_eval_and_predict_accept_missing(tmp_path):
    times, values = make_series(length=300, variables=1, seed=0)
    write_series_csv(tmp_path / "train.csv", times, values, ["s0"])
    code, _, err = run_cli(["train", "--data", tmp_path / "train.csv", "--output", tmp_path / "run",
                            "--modality", "timeseries", "--model", "unireplknet_a", "--lookback", "24",
                            "--horizon", "6", "--embed-dim", "16", "--epochs", "1", "--max-steps", "1",
                            "--batch-size", "8", "--warmup-epochs", "0"])
    assert code == 0, err
    gappy = values.copy()
    gappy[100] = np.nan
    keep = np.r_[0:200, 201:300]  # one hour absent and one value empty
    write_series_csv(tmp_path / "gappy.csv", times[keep], gappy[keep], ["s0"])
    ckpt = tmp_path / "run" / "best.safetensors"
    code, out, err = run_cli(["eval", ckpt, "--data", tmp_path / "gappy.csv", "--output", tmp_path / "e"])
    assert code != 0 and "column 's0' has 1 missing value(s)" in err
    code, out, err = run_cli(["eval", ckpt, "--data", tmp_path / "gappy.csv", "--output", tmp_path / "e",
                              "--missing", "interpolate", "--json"])
    assert code == 0, err
    code, out, err = run_cli(["predict", tmp_path / "gappy.csv", "--checkpoint", ckpt, "--output",
                              tmp_path / "p"])
    assert code == 1 and "missing value" in out
    code, out, err = run_cli(["predict", tmp_path / "gappy.csv", "--checkpoint", ckpt, "--output",
                              tmp_path / "p", "--missing", "interpolate"])
    assert code == 0 and "6-step forecast of 1 variable(s)" in out
