"""Audio files as recorders, DAWs and codecs write them: every WAV subtype, compressed formats, odd lengths."""
from __future__ import annotations

import struct
import tracemalloc

import numpy as np
import pytest
import torch

sf = pytest.importorskip("soundfile")
pytest.importorskip("soxr")

from largekernel.engine.config import resolve_config  # noqa: E402
from largekernel.modalities import audio  # noqa: E402
from largekernel.modalities.audio import FrontEnd, read_audio  # noqa: E402

RATE = 16000


def tone(seconds: float, rate: int = RATE, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float64)


# (subtype, worst-case quantisation error of a full-scale-0.5 signal read back as float)
WAV_SUBTYPES = {
    "PCM_U8": 1 / 128, "PCM_16": 1 / 2 ** 15, "PCM_24": 1 / 2 ** 23, "PCM_32": 1 / 2 ** 31 + 2 ** -24,
    "FLOAT": 2 ** -24, "DOUBLE": 2 ** -24,
    # G.711 companding: 8-bit codes whose step is at most 2^-5 of full scale (the top segment)
    "ULAW": 2 ** -5, "ALAW": 2 ** -5,
}


@pytest.mark.parametrize("container", ["WAV", "WAVEX"])
@pytest.mark.parametrize("subtype", list(WAV_SUBTYPES))
def test_every_wav_subtype_reads_back_the_signal(tmp_path, container, subtype):
    """WAVEX is WAVE_FORMAT_EXTENSIBLE (what recorders write for > 2 channels or > 16 bits)."""
    x = tone(0.25)
    path = tmp_path / "a.wav"
    sf.write(path, x, RATE, subtype=subtype, format=container)
    assert sf.info(str(path)).format == container and sf.info(str(path)).subtype == subtype
    y = read_audio(path).numpy()
    assert y.shape == x.shape and y.dtype == np.float32
    # float32 output adds at most 2^-24 * 0.5 on top of the subtype's own quantisation
    assert np.abs(y - x).max() <= WAV_SUBTYPES[subtype] + 2 ** -25


def test_hand_written_wav_with_extra_chunks_and_odd_chunk_padding(tmp_path):
    """Format tag 3 (IEEE float) with a `fact` chunk, an odd-sized `LIST` chunk (padded to even
    length by the RIFF rules) before `data`: the layout of many editors' exports."""
    x = tone(0.1).astype("<f4")
    fmt = struct.pack("<HHIIHH", 3, 1, RATE, RATE * 4, 4, 32)
    chunks = (b"fmt " + struct.pack("<I", len(fmt)) + fmt
              + b"fact" + struct.pack("<II", 4, len(x))
              + b"LIST" + struct.pack("<I", 5) + b"INFOx" + b"\0"
              + b"data" + struct.pack("<I", x.nbytes) + x.tobytes())
    path = tmp_path / "hand.wav"
    path.write_bytes(b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks)
    assert np.array_equal(read_audio(path).numpy(), x)


def test_multichannel_is_averaged(tmp_path):
    x = np.stack([tone(0.1, amp=a) for a in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)], axis=1)  # 5.1
    sf.write(tmp_path / "surround.wav", x, RATE, subtype="FLOAT")
    np.testing.assert_allclose(read_audio(tmp_path / "surround.wav").numpy(), tone(0.1, amp=0.35),
                               atol=2 ** -22)  # six float32 roundings of values below 1


@pytest.mark.parametrize("rate", [8000, 11025, 22050, 32000, 44100, 48000, 88200, 96000])
def test_sample_rates_from_8_to_96_khz_are_resampled(tmp_path, rate):
    sf.write(tmp_path / "r.wav", tone(0.5, rate), rate, subtype="PCM_16")
    y = read_audio(tmp_path / "r.wav").numpy()
    n = len(y)
    assert abs(n - int(0.5 * rate) * RATE / rate) <= 1  # the duration is kept
    spectrum = np.abs(np.fft.rfft(y * np.hanning(n)))
    assert abs(np.argmax(spectrum) * RATE / n - 440.0) <= RATE / n / 2  # the tone stays at 440 Hz


@pytest.mark.parametrize("fmt, subtype, ext, atol", [
    ("FLAC", "PCM_16", "flac", 2 ** -15),
    ("FLAC", "PCM_24", "flac", 2 ** -23),
    ("OGG", "VORBIS", "ogg", 0.05),
    ("OGG", "OPUS", "ogg", 0.1),
    ("MP3", "MPEG_LAYER_III", "mp3", 0.1),
])
def test_compressed_formats(tmp_path, fmt, subtype, ext, atol):
    if fmt not in sf.available_formats() or subtype not in sf.available_subtypes(fmt):
        pytest.skip(f"this libsndfile cannot write {fmt}/{subtype}")
    rate = 48000 if subtype == "OPUS" else RATE
    x = tone(0.5, rate)
    sf.write(tmp_path / f"a.{ext}", x, rate, format=fmt, subtype=subtype)
    y = read_audio(tmp_path / f"a.{ext}").numpy()
    assert abs(len(y) - 8000) <= 1200  # lossy codecs may add encoder delay/padding (< 75 ms)
    spectrum = np.abs(np.fft.rfft(y[:7000] * np.hanning(7000)))
    assert abs(np.argmax(spectrum) * RATE / 7000 - 440.0) < RATE / 7000  # the tone survives coding
    if fmt == "FLAC":  # lossless: the samples themselves
        assert np.abs(y - x).max() <= atol


def test_a_libsndfile_without_mp3_says_what_is_needed(tmp_path, monkeypatch):
    (tmp_path / "a.mp3").write_bytes(b"\xff\xfb" + b"\0" * 400)
    monkeypatch.setattr(sf, "available_formats", lambda: {"WAV": "", "FLAC": "", "OGG": ""})
    with pytest.raises(ValueError, match=r"a\.mp3: the installed libsndfile .* cannot read MP3 files; "
                                         r"install soundfile>=0\.12\.1.*or convert it: ffmpeg -i IN OUT\.wav"):
        read_audio(tmp_path / "a.mp3")


def test_clip_shorter_than_the_window_is_padded(tmp_path):
    cfg = resolve_config(overrides=dict(modality="audio", target_frames=100, mel_bins=32, audio_mean=0.0, audio_std=1.0))
    sf.write(tmp_path / "blip.wav", tone(0.05), RATE, subtype="PCM_16")  # 50 ms: 4 frames
    x = audio.AudioModality().load(tmp_path / "blip.wav", cfg)
    assert x.shape == (cfg.in_chans, 100, 32)
    assert (x[:, 4:] == x[0, 4, 0]).all() and not (x[:, :4] == x[0, 4, 0]).all()  # frames 4.. padded


def test_long_files_are_read_as_a_window_not_whole(tmp_path):
    """A 10-minute recording: only the window is decoded (the whole file as float32 would be 38 MB)."""
    rng = np.random.default_rng(0)
    long = (rng.standard_normal(RATE * 600) * 0.1).astype(np.float32)
    sf.write(tmp_path / "long.wav", long, RATE, subtype="FLOAT")
    window = FrontEnd(resolve_config(overrides=dict(modality="audio", audio_std=1.0))).samples
    tracemalloc.start()
    y = read_audio(tmp_path / "long.wav", RATE, window)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 4 * window * 4 + (1 << 20) and np.array_equal(y.numpy(), long[:window])
    torch.manual_seed(3)
    random = read_audio(tmp_path / "long.wav", RATE, window, train=True).numpy()
    torch.manual_seed(3)
    start = int(torch.randint(len(long) - window + 1, ()).item())  # FrontEnd.crop's draw
    assert np.array_equal(random, long[start:start + window])


def test_long_files_at_other_rates_give_the_window_of_the_whole_file_resampled(tmp_path):
    """The read starts on an input sample that falls on an output sample (and 256 input samples
    early, for the resampler's filter), so the window equals that part of the whole file resampled,
    up to float32 rounding (measured 1e-7 on samples of magnitude < 0.5)."""
    x = (np.random.default_rng(0).standard_normal(44100 * 20) * 0.1).astype(np.float32)
    sf.write(tmp_path / "long44.wav", x, 44100, subtype="FLOAT")
    full = read_audio(tmp_path / "long44.wav").numpy()
    assert len(full) == 320000
    np.testing.assert_allclose(read_audio(tmp_path / "long44.wav", RATE, 16000).numpy(), full[:16000],
                               rtol=0, atol=1e-6)
    for seed in range(3):
        torch.manual_seed(seed)
        y = read_audio(tmp_path / "long44.wav", RATE, 16000, train=True).numpy()
        torch.manual_seed(seed)
        start = int(torch.randint(len(full) - 16000 + 1, ()).item())
        np.testing.assert_allclose(y, full[start:start + 16000], rtol=0, atol=1e-6)
