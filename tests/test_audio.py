"""Tests of the audio modality: Kaldi fbank parity with kaldi_native_fbank on espeak-ng speech,
resampling, decoding (WAV/FLAC/OGG, stereo, bad files), the Speech Commands split, augmentation,
and `make-speech` / `train` / `eval` / `predict` / `audio-stats` end to end.

The CLI runs use UniRepLKNet-A with 3x3 kernels on 100 x 40 log-mel inputs so that a training
step takes a fraction of a second on 2 busy CPU cores.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

from largekernel.engine.config import resolve_config
from largekernel.modalities import Skipped, collate, get_modality
from largekernel.modalities.audio import (AudioDataset, AudioError, FrontEnd, fit_frames,
                                          kaldi_fbank, load_split, read_audio, resample,
                                          spec_augment)
from largekernel.modalities.speech_data import espeak, write_speech_dataset
from clitools import run_cli, sub_env

TINY = ["--model", "unireplknet_a", "--model-kwargs", '{"kernel_sizes": [3, 3, 3, 3]}',
        "--in-chans", "1", "--mel-bins", "40", "--target-frames", "100", "--warmup-epochs", "0",
        "--lr", "2e-3", "--batch-size", "8"]


def sine(freq: float, rate: int, seconds: float = 1.0, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(int(rate * seconds)) / rate)).astype(np.float32)


def audio_cfg(**kw):
    base = dict(modality="audio", in_chans=1, mel_bins=40, target_frames=100)
    return resolve_config(overrides={**base, **kw})


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> Path:
    """3 words x 12 clips (one per voice) by espeak-ng; 2 voices validation, 2 testing."""
    root = tmp_path_factory.mktemp("speech") / "sc"
    write_speech_dataset(root, ["yes", "no", "up"], per_word=12, seed=0)
    return root


# ------------------------------------------------------------------------------- features

def kaldi_native(wave: np.ndarray, bins: int = 128) -> np.ndarray:
    import kaldi_native_fbank as knf

    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = 16000
    opts.frame_opts.dither = 0.0
    opts.frame_opts.window_type = "hanning"
    opts.frame_opts.snip_edges = True
    opts.frame_opts.remove_dc_offset = True
    opts.mel_opts.num_bins = bins
    opts.use_energy = False
    opts.htk_compat = True
    fb = knf.OnlineFbank(opts)
    fb.accept_waveform(16000, wave.tolist())
    fb.input_finished()
    return np.stack([fb.get_frame(i) for i in range(fb.num_frames_ready)])


@pytest.mark.parametrize("voice,bins", [("en-us+m3", 128), ("en-gb-scotland+f3", 128), ("en-us+f2", 80)])
def test_fbank_matches_kaldi_native_fbank_on_speech(voice, bins):
    wave, rate = espeak("the quick brown fox jumps over the lazy dog", voice, 160, 50)
    wave = soxr.resample(wave, rate, 16000, quality="HQ").astype(np.float32)
    wave = wave - wave.mean()
    ref = kaldi_native(wave, bins)
    ours = kaldi_fbank(torch.from_numpy(wave), num_mel_bins=bins).numpy()
    assert ours.shape == ref.shape == (1 + (len(wave) - 400) // 160, bins)
    assert np.abs(ours - ref).max() <= 1e-3
    # batched: the same per row
    batch = kaldi_fbank(torch.from_numpy(np.stack([wave, wave[::-1].copy()])), num_mel_bins=bins)
    assert torch.equal(batch[0], torch.from_numpy(ours))


def test_fbank_short_input_and_fit_frames():
    assert kaldi_fbank(torch.zeros(399)).shape == (0, 128)
    fb = torch.randn(98, 40)
    padded = fit_frames(fb, 128)
    assert padded.shape == (128, 40) and torch.equal(padded[:98], fb) and not padded[98:].any()
    assert torch.equal(fit_frames(fb, 50), fb[:50])


# ------------------------------------------------------------------------------- decoding

@pytest.mark.parametrize("rate", [44100, 48000, 8000, 22050])
def test_resampling_to_16k_keeps_the_tone(tmp_path, rate):
    x = sine(1000, rate)
    path = tmp_path / f"tone{rate}.wav"
    sf.write(path, x, rate, subtype="FLOAT")
    y = read_audio(path).numpy()
    assert y.shape == (16000,)
    np.testing.assert_array_equal(y, soxr.resample(x, rate, 16000, quality="HQ"))
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    assert np.argmax(spectrum) == 1000  # 1 Hz bins over 1 s
    assert abs(np.sqrt(np.mean(y[1000:-1000] ** 2)) - 0.5 / np.sqrt(2)) < 1e-3


def test_resampling_removes_tones_above_the_new_nyquist():
    """A real resampler low-passes: 12 kHz at 48 kHz must vanish, not alias to 4 kHz as naive
    interpolation does."""
    x = sine(12000, 48000)
    y = resample(x, 48000, 16000)
    assert y.shape == (16000,) and np.abs(y[100:-100]).max() < 1e-4
    naive = np.interp(np.arange(16000) * 3, np.arange(48000), x)
    assert np.abs(naive).max() > 0.4  # the aliasing a real resampler avoids


def test_stereo_is_mixed_down_to_mono(tmp_path):
    left, right = sine(440, 16000), sine(880, 16000, amp=0.25)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], 1), 16000, subtype="FLOAT")
    np.testing.assert_allclose(read_audio(path).numpy(), (left + right) / 2, atol=1e-7)


def test_flac_and_ogg_are_read(tmp_path):
    x = np.round(sine(500, 16000) * 32767).astype(np.int16)  # the same 16-bit samples in each file
    for ext in ("wav", "flac", "ogg"):
        sf.write(tmp_path / f"a.{ext}", x, 16000)
    wav, flac, ogg = (read_audio(tmp_path / f"a.{e}").numpy() for e in ("wav", "flac", "ogg"))
    np.testing.assert_array_equal(flac, wav)  # both 16-bit, FLAC is lossless
    assert ogg.shape == wav.shape and np.corrcoef(ogg, wav)[0, 1] > 0.99  # Vorbis is lossy


def write_bad_files(folder: Path) -> dict[str, str]:
    """One file per kind of bad input -> {file name: expected message part}."""
    folder.mkdir(parents=True, exist_ok=True)
    sf.write(folder / "good.wav", sine(300, 16000), 16000, subtype="PCM_16")
    data = (folder / "good.wav").read_bytes()
    (folder / "truncated.wav").write_bytes(data[:len(data) // 2])
    sf.write(folder / "empty.wav", np.zeros(0, np.float32), 16000)
    sf.write(folder / "silent.wav", np.zeros(16000, np.float32), 16000)
    nan = sine(300, 16000)
    nan[100] = np.nan
    sf.write(folder / "nan.wav", nan, 16000, subtype="FLOAT")
    (folder / "garbage.wav").write_bytes(np.random.RandomState(0).bytes(900))
    sf.write(folder / "short.wav", sine(300, 16000, seconds=0.01), 16000)
    return {"truncated.wav": "truncated: the header declares 32000 bytes of samples but the file holds 15978",
            "empty.wav": "zero-length audio", "silent.wav": "silent audio",
            "nan.wav": "NaN or infinite samples", "garbage.wav": "cannot decode audio",
            "short.wav": "too short: 160 samples at 16000 Hz"}


def test_bad_inputs_give_errors_naming_the_file(tmp_path):
    expected = write_bad_files(tmp_path)
    assert read_audio(tmp_path / "good.wav").shape == (16000,)
    for name, message in expected.items():
        with pytest.raises(ValueError) as info:
            read_audio(tmp_path / name)
        assert str(info.value).startswith(f"{tmp_path / name}: ") and message in str(info.value)
    (tmp_path / "clip.m4a").write_bytes(b"\0" * 100)
    with pytest.raises(ValueError, match=r"clip\.m4a: unsupported audio format '\.m4a' \(supported: "
                                         r"\.wav, \.flac, \.ogg, \.mp3\)"):
        read_audio(tmp_path / "clip.m4a")


def test_unreadable_clips_are_skipped_or_raise_when_strict(tmp_path):
    expected = write_bad_files(tmp_path / "x")
    samples = [(str(tmp_path / "x" / n), 0) for n in ["good.wav", *expected]]
    ds = AudioDataset(samples, ["x"], audio_cfg(), train=True)
    items = [ds[i] for i in range(len(ds))]
    assert isinstance(items[0], tuple) and items[0][0].shape == (1, 100, 40)
    skipped = [s for s in items if isinstance(s, Skipped)]
    assert [Path(s.path).name for s in skipped] == list(expected)
    assert all(m in s.reason for s, m in zip(skipped, expected.values()))
    batch = collate(items)
    assert batch["x"].shape == (1, 1, 100, 40) and len(batch["skipped"]) == len(expected)
    strict = AudioDataset(samples, ["x"], audio_cfg(strict=True), train=False)
    with pytest.raises(AudioError, match="truncated"):
        strict[1]


# ------------------------------------------------------------------------------- datasets

def write_tones(root: Path, words=("high", "low"), per_word=4) -> Path:
    for k, word in enumerate(words):
        (root / word).mkdir(parents=True)
        for i in range(per_word):
            sf.write(root / word / f"s{i}_nohash_0.wav", sine(300 * (k + 1) + 20 * i, 16000), 16000)
    return root


def test_speech_commands_split_honours_the_lists(tmp_path):
    root = write_tones(tmp_path / "sc")
    (root / "_background_noise_").mkdir()
    sf.write(root / "_background_noise_" / "noise.wav", sine(50, 16000, seconds=3), 16000)
    (root / "validation_list.txt").write_text("high/s1_nohash_0.wav\nlow/s1_nohash_0.wav\n")
    (root / "testing_list.txt").write_text("low/s2_nohash_0.wav\n\n")
    cfg = audio_cfg(train=str(root))
    data = get_modality("audio").datasets(cfg)
    assert data.classes == ["high", "low"]
    names = lambda ds: sorted(str(Path(p).relative_to(root)) for p, _ in ds.samples)  # noqa: E731
    assert names(data.train) == ["high/s0_nohash_0.wav", "high/s2_nohash_0.wav",
                                 "high/s3_nohash_0.wav", "low/s0_nohash_0.wav", "low/s3_nohash_0.wav"]
    assert names(data.val) == ["high/s1_nohash_0.wav", "low/s1_nohash_0.wav"]
    assert len(data.train.noise) == 1 and data.train.noise[0].shape == (48000,)
    # eval on the root: the testing list; on a list file: that list
    test = get_modality("audio").datasets(audio_cfg(val=str(root), classes=["high", "low"]), train=False)
    assert names(test.val) == ["low/s2_nohash_0.wav"] and test.val.samples[0][1] == 1
    samples, _ = load_split(root / "validation_list.txt", None, "testing")
    assert len(samples) == 2
    (root / "testing_list.txt").write_text("low/s9_nohash_0.wav\n")
    with pytest.raises(ValueError, match=r"testing_list\.txt, line 1: low/s9_nohash_0\.wav is not an "
                                         r"audio file of a class folder"):
        get_modality("audio").datasets(cfg)


def test_generic_folder_and_csv(tmp_path):
    root = write_tones(tmp_path / "gen", per_word=5)
    data = get_modality("audio").datasets(audio_cfg(train=str(root), val_split=0.2))
    assert (len(data.train), len(data.val)) == (8, 2) and data.train.noise == []
    csv = tmp_path / "list.csv"
    csv.write_text("path,label\ngen/high/s0_nohash_0.wav,high\ngen/low/s1_nohash_0.wav,low\n")
    data = get_modality("audio").datasets(audio_cfg(train=str(csv), val=str(csv)))
    assert data.classes == ["high", "low"] and len(data.val) == 2
    with pytest.raises(ValueError, match="no audio files found; expected one subfolder per class"):
        get_modality("audio").datasets(audio_cfg(train=str(root / "high")))


# ------------------------------------------------------------------------------- augmentation

def test_spec_augment_masks_one_band_each():
    torch.manual_seed(3)
    x = torch.randn(128, 128) + 10
    y = spec_augment(x, 48, 48)
    zero_cols = (y == 0).all(0).nonzero().flatten()
    zero_rows = (y == 0).all(1).nonzero().flatten()
    assert 0 < len(zero_cols) < 48 and 0 < len(zero_rows) < 48
    assert torch.equal(zero_cols, torch.arange(zero_cols[0], zero_cols[-1] + 1))  # contiguous
    assert torch.equal(zero_rows, torch.arange(zero_rows[0], zero_rows[-1] + 1))
    assert torch.equal(spec_augment(x, 0, 0), x)


def test_training_samples_mixup_targets_and_determinism(speech):
    cfg = audio_cfg(train=str(speech), mixup=10.0, mixup_prob=1.0, smoothing=0.0)
    train = get_modality("audio").datasets(cfg).train
    torch.manual_seed(0)
    x, y = train[0]
    torch.manual_seed(0)
    x2, y2 = train[0]
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert x.shape == (1, 100, 40) and y.dtype == torch.float32 and y.shape == (3,)
    assert abs(y.sum().item() - 1) < 1e-6 and y[train.samples[0][1]] >= 0.1  # Beta(10, 10) mixes
    torch.manual_seed(1)
    assert not torch.equal(train[0][0], x)
    # without mixup: hard labels; evaluation: no augmentation at all
    hard = get_modality("audio").datasets(audio_cfg(train=str(speech))).train
    assert isinstance(hard[0][1], int)
    val = get_modality("audio").datasets(cfg).val
    torch.manual_seed(5)
    a = val[0][0]
    torch.manual_seed(6)
    assert torch.equal(a, val[0][0])
    # mixup batches are uniform: all soft targets
    assert collate([train[i] for i in range(4)])["y"].shape == (4, 3)


def test_front_end_normalises_and_repeats_channels(speech):
    cfg = audio_cfg(in_chans=3, audio_mean=-5.0, audio_std=2.0)
    front = FrontEnd(cfg)
    assert front.samples == 99 * 160 + 400
    wave = read_audio(next((speech / "yes").iterdir()))
    x = front(wave)
    raw = fit_frames(kaldi_fbank(wave - wave.mean(), 16000, 40), 100)
    assert x.shape == (3, 100, 40) and torch.equal(x[0], x[2])
    torch.testing.assert_close(x[0], (raw + 5.0) / 4.0)
    assert torch.all(x[0, 98:] == 5.0 / 4.0)  # 1 s = 98 frames, then zero padding
    with pytest.raises(ValueError, match="audio_std=0"):
        FrontEnd(audio_cfg(audio_std=0.0))


def test_preset_speechcommands_s():
    cfg = resolve_config("speechcommands_s")
    assert (cfg.modality, cfg.model, cfg.in_chans, cfg.drop_path, cfg.opt, cfg.lr) == \
        ("audio", "unireplknet_s", 1, 0.4, "adam", 2.5e-4)
    assert (cfg.sched, cfg.lr_decay, cfg.lr_decay_start, cfg.loss, cfg.mixup, cfg.mixup_prob) == \
        ("step", 0.85, 5, "bce", 10.0, 0.6)
    assert (cfg.betas, cfg.weight_decay, cfg.batch_size, cfg.epochs, cfg.smoothing) == \
        ((0.95, 0.999), 5e-7, 128, 100, 0.0)
    assert (cfg.mel_bins, cfg.target_frames, cfg.freq_mask, cfg.time_mask) == (128, 128, 48, 48)


# ------------------------------------------------------------------------------- CLI

def test_make_speech_writes_the_speech_commands_layout(speech):
    words = sorted(p.name for p in speech.iterdir() if p.is_dir())
    assert words == ["_background_noise_", "no", "up", "yes"]
    assert len(list((speech / "yes").glob("*_nohash_*.wav"))) == 12
    val = (speech / "validation_list.txt").read_text().split()
    test = (speech / "testing_list.txt").read_text().split()
    assert len(val) == len(test) == 6  # 2 voices x 3 words
    voices = lambda names: {Path(n).name.split("_nohash_")[0] for n in names}  # noqa: E731
    assert len(voices(val)) == len(voices(test)) == 2 and not voices(val) & voices(test)
    info = sf.info(str(speech / val[0]))
    assert (info.samplerate, info.channels, info.frames, info.subtype) == (16000, 1, 16000, "PCM_16")
    code, _, err = run_cli(["make-speech", speech, "--per-word", "12"])
    assert code == 2 and "already exists and is not empty; pass overwrite=True (--overwrite)" in err
    code, _, err = run_cli(["make-speech", speech.parent / "new", "--per-word", "4"])
    assert (code, err) == (2, "error: held_out=2: with 4 voices (per_word=4) hold out 1..1 voices "
                              "per list; raise per_word\n")


def test_audio_stats_prints_the_options(speech):
    code, out, _ = run_cli(["audio-stats", "--data", speech, "--set", "mel_bins=40",
                            "--set", "target_frames=100", "--json"])
    stats = json.loads(out)
    assert code == 0 and stats["files"] == 24 and stats["skipped"] == []
    cfg = audio_cfg(train=str(speech))
    x = torch.stack([FrontEnd(cfg).raw(read_audio(p)) for p, _ in
                     get_modality("audio").datasets(cfg).train.samples])
    assert abs(stats["mean"] - x.double().mean().item()) < 1e-6
    assert abs(stats["std"] - x.double().std(unbiased=False).item()) < 1e-6
    code, out, _ = run_cli(["audio-stats", "--data", speech, "--max-files", "3"])
    assert code == 0 and out.startswith("3 files: log-mel mean ")
    assert "train with: --set audio_mean=" in out


def test_train_eval_predict_end_to_end(speech, tmp_path):
    bad = tmp_path / "with_bad"  # the dataset plus two unreadable clips
    shutil.copytree(speech, bad)
    write_bad_files(tmp_path / "bad")
    for name in ("truncated.wav", "nan.wav"):
        shutil.copy(tmp_path / "bad" / name, bad / "yes" / name)
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "largekernel", "train", "--modality", "audio",
                           "--data", bad, "--output", run, *TINY, "--epochs", "1",
                           "--mixup", "10", "--mixup-prob", "0.6", "--loss", "bce",
                           "--smoothing", "0"],
                          capture_output=True, text=True, env=sub_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "skipped        2 unreadable samples" in proc.stdout
    skipped = (run / "skipped.txt").read_text()
    assert "truncated.wav\ttruncated" in skipped and "nan.wav\tcontains NaN" in skipped
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 4  # 26 train clips (24 + 2 bad), padded to whole batches of 8
    code, out, _ = run_cli(["eval", run / "last.safetensors", "--data", speech, "--json"])
    metrics = json.loads(out)
    assert code == 0 and metrics["n"] == 6 and metrics["classes"] == ["no", "up", "yes"]
    clip = speech / (speech / "testing_list.txt").read_text().split()[0]
    code, out, _ = run_cli(["predict", "--checkpoint", run / "last.safetensors", clip,
                            tmp_path / "bad" / "silent.wav", "--topk", "2"])
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith(f"{clip}: ") and len(lines[0].split("%")) == 3
    assert {w.split()[0] for w in lines[0].split(": ", 1)[1].split(", ")} <= {"no", "up", "yes"}
    assert lines[1] == (f"{tmp_path / 'bad' / 'silent.wav'}: ERROR {tmp_path / 'bad' / 'silent.wav'}: "
                        "silent audio (peak amplitude below 0.0001)")
    code, out, _ = run_cli(["reparam", run / "last.safetensors", "-o", tmp_path / "deploy.safetensors"])
    assert code == 0 and "(OK, tolerance 1e-5)" in out


@pytest.mark.slow
def test_learns_words_of_held_out_voices(tmp_path):
    """UniRepLKNet-A (3x3 kernels, 100 x 64 log-mel) on 4 espeak words from 20 voices: >= 90% on
    the 4 unheard voices of validation_list.txt + testing_list.txt, with the last weights (no
    selection on them). Threads: the caller's OMP_NUM_THREADS (measured with 2)."""
    data = tmp_path / "sc"
    write_speech_dataset(data, ["yes", "no", "up", "down"], per_word=96, seed=0)
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "largekernel", "train", "--modality", "audio",
                           "--data", data, "--output", run, *TINY, "--mel-bins", "64",
                           "--epochs", "16", "--batch-size", "16", "--warmup-epochs", "1",
                           "--clip-grad", "1", "--weight-decay", "0.01", "--freq-mask", "8",
                           "--time-mask", "10", "--noise-prob", "0",
                           "--smoothing", "0"],
                          capture_output=True, text=True, timeout=900,
                          env=dict(sub_env(), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1")))
    assert proc.returncode == 0, proc.stderr
    held_out = tmp_path / "held_out.csv"
    held_out.write_text("".join(f"{data / rel},{rel.split('/')[0]}\n" for name in
                                ("validation_list.txt", "testing_list.txt")
                                for rel in (data / name).read_text().split()))
    code, out, _ = run_cli(["eval", run / "last.safetensors", "--data", held_out, "--json"])
    metrics = json.loads(out)
    assert code == 0 and metrics["n"] == 64
    assert metrics["top1"] >= 90.0, metrics
