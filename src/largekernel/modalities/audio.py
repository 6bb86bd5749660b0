"""The audio modality: clips -> 16 kHz mono -> Kaldi log-mel filterbank -> 1 x frames x mel bins.

The recipe is the authors' (AST's, which UniRepLKNet follows): mean-removed waveform, 128-bin
Kaldi-compatible log-mel filterbank (25 ms Hanning window, 10 ms shift, HTK mel, no energy, no
dither), padded with zeros or cropped to `target_frames`, normalised as (x - mean) / (2 * std).
Training adds waveform mixup (soft targets made here, in the dataset), background noise,
SpecAugment masks and a random time roll; every random draw comes from torch's global RNG.

Datasets: the Speech Commands layout (one folder per word, `validation_list.txt` and
`testing_list.txt` naming held-out files, `_background_noise_/` used for noise, not a class), any
class-per-folder tree, or a CSV of path,label.
"""
from __future__ import annotations

import json
import math
import struct
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..engine.classification import Classification
from ..engine.commands import Command, arg, positive_int
from ..engine.config import TrainConfig, option
from ..engine.data import DataBundle, Skipped
from ..engine.plugin import register_plugin
from . import files
from .files import Sample, file_datasets, one_thread, split_samples

EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
CONTAINERS = {".flac": "FLAC", ".ogg": "OGG", ".mp3": "MP3"}  # libsndfile's names; WAV is always built in
NOISE_DIR = "_background_noise_"
LISTS = ("validation_list.txt", "testing_list.txt")
INSTALL = 'pip install "largekernel[audio]"'
FRAME_MS, SHIFT_MS, PREEMPH, LOW_FREQ = 25.0, 10.0, 0.97, 20.0
SILENCE = 1e-4  # peak amplitude (-80 dBFS) below which a clip counts as silent


class AudioError(ValueError):
    """An unusable audio file: the message names the file and says what is wrong."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


def _soundfile():
    try:
        import soundfile
    except ImportError as e:
        raise ImportError(f"reading audio needs soundfile; install it with {INSTALL}") from e
    return soundfile


# ----------------------------------------------------------------------------- decoding

def resample(wave: np.ndarray, orig_rate: int, rate: int) -> np.ndarray:
    """Band-limited resampling with libsoxr (high quality) of a 1-D float32 signal."""
    if orig_rate == rate:
        return wave
    try:
        import soxr
    except ImportError as e:
        raise ImportError(f"resampling audio needs soxr; install it with {INSTALL}") from e
    return soxr.resample(wave, orig_rate, rate, quality="HQ").astype(np.float32, copy=False)


def _wav_shortfall(path: Path) -> tuple[int, int] | None:
    """(declared, present) bytes of a RIFF WAV's data chunk when the file ends early, else None.

    libsndfile silently reads what is there, so a truncated WAV would pass as a shorter clip.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk, length = struct.unpack("<4sI", f.read(8))
            if chunk == b"data":
                present = size - pos - 8
                # 0 and >= 0x7FFFF000 are "unknown length" placeholders of streaming writers
                return (length, present) if 0 < length < 0x7FFFF000 and present < length else None
            pos += 8 + length + (length & 1)
    return None


def _decode(sf, path: Path, sample_rate: int, window: int | None, train: bool
            ) -> tuple[np.ndarray, int, int | None]:
    """(samples (frames, channels), file rate, None or the output samples to drop before the window).

    Of a file longer than `window` output samples only the window (plus the resampler's margin) is
    decoded, after a seek, so long recordings never sit in memory whole: from the start, or in
    training from a random start drawn as `FrontEnd.crop` draws it.
    """
    with sf.SoundFile(str(path)) as f:
        rate, frames = f.samplerate, f.frames
        total = math.ceil(frames * sample_rate / rate)  # output samples of the whole file
        if window is None or total <= window:
            return f.read(dtype="float32", always_2d=True), rate, None
        extra = total - window
        start = int(torch.randint(extra + 1, ()).item()) if train else 0
        margin = 0 if rate == sample_rate else 256  # input samples before the window for the resampler
        # start the read on an input sample that falls on an output sample, so the window's samples
        # are those of the whole file resampled (blocks of rate/g input = sample_rate/g output samples)
        g = math.gcd(rate, sample_rate)
        block = max(0, start * rate // sample_rate - margin) // (rate // g)
        first, lead = block * (rate // g), start - block * (sample_rate // g)
        f.seek(first)
        count = math.ceil((lead + window) * rate / sample_rate) + margin
        data = f.read(min(count, frames - first), dtype="float32", always_2d=True)
        return data, rate, lead


def read_audio(path: str | Path, sample_rate: int = 16000, window: int | None = None,
               train: bool = False) -> torch.Tensor:
    """Decode a WAV/FLAC/OGG/MP3 file (any libsndfile subtype: 8-bit unsigned to 32-bit integer,
    32/64-bit float, mu-law/A-law, WAVE_FORMAT_EXTENSIBLE, any channel count) to a 1-D float32
    tensor: mono (channels averaged) at `sample_rate`. With `window`, a longer file gives only
    `window` samples (see `_decode`). Raises `AudioError` (a ValueError naming the file) for
    unsupported, unreadable, truncated, empty, too short, silent or non-finite audio."""
    path = Path(path)
    if path.suffix.lower() not in EXTENSIONS:
        raise AudioError(path, f"unsupported audio format '{path.suffix}' (supported: "
                               f"{', '.join(EXTENSIONS)}); convert it, e.g. ffmpeg -i IN OUT.wav")
    if not path.is_file():
        raise AudioError(path, "file does not exist")
    sf = _soundfile()
    needed = CONTAINERS.get(path.suffix.lower())
    if needed and needed not in sf.available_formats():
        raise AudioError(path, f"the installed libsndfile {sf.__libsndfile_version__} cannot read "
                               f"{needed} files; install soundfile>=0.12.1, whose wheels bundle libsndfile "
                               f">=1.1 with MP3/OGG/FLAC, or convert it: ffmpeg -i IN OUT.wav")
    try:
        data, rate, lead = _decode(sf, path, sample_rate, window, train)
    except Exception as e:  # libsndfile's errors for corrupt or truncated data
        raise AudioError(path, f"cannot decode audio: {' '.join(str(e).split())}") from e
    if path.suffix.lower() == ".wav" and (short := _wav_shortfall(path)):
        raise AudioError(path, f"truncated: the header declares {short[0]} bytes of samples but "
                               f"the file holds {short[1]}; re-export or delete it")
    if data.shape[0] == 0:
        raise AudioError(path, "zero-length audio (no samples)")
    if not np.isfinite(data).all():
        raise AudioError(path, "contains NaN or infinite samples")
    wave = resample(np.ascontiguousarray(data.mean(axis=1)), int(rate), sample_rate)
    if lead is not None:  # a window: drop the resampler's margin
        # a quiet stretch of a long recording is not an error: no silence check here
        return torch.from_numpy(np.ascontiguousarray(wave[lead:lead + window]))
    need = int(sample_rate * FRAME_MS / 1000)
    if wave.shape[0] < need:
        raise AudioError(path, f"too short: {wave.shape[0]} samples at {sample_rate} Hz; at least "
                               f"one {FRAME_MS:g} ms frame ({need} samples) is needed")
    if np.abs(wave).max() < SILENCE:
        raise AudioError(path, f"silent audio (peak amplitude below {SILENCE:g})")
    return torch.from_numpy(wave)


# ----------------------------------------------------------------------------- features

def _mel(freq: torch.Tensor | float):
    """Kaldi's (HTK) mel scale."""
    return 1127.0 * (torch.log1p(freq / 700.0) if torch.is_tensor(freq) else math.log1p(freq / 700.0))


@lru_cache(maxsize=8)
def mel_banks(num_bins: int, n_fft: int, sample_rate: int, low_freq: float = LOW_FREQ,
              high_freq: float = 0.0) -> torch.Tensor:
    """Kaldi's triangular mel filters as a (num_bins, n_fft // 2 + 1) matrix over rfft bins
    (the Nyquist bin gets weight 0, as in Kaldi); high_freq <= 0 is relative to Nyquist."""
    nyquist = sample_rate / 2
    high = high_freq if high_freq > 0 else nyquist + high_freq
    if not 0 <= low_freq < high <= nyquist:
        raise ValueError(f"mel range [{low_freq}, {high}] Hz does not fit below Nyquist {nyquist} Hz")
    mel_low, mel_high = _mel(low_freq), _mel(high)
    delta = (mel_high - mel_low) / (num_bins + 1)
    left = mel_low + delta * torch.arange(num_bins, dtype=torch.float64)[:, None]
    center, right = left + delta, left + 2 * delta
    mel = _mel(sample_rate / n_fft * torch.arange(n_fft // 2, dtype=torch.float64))[None]
    up, down = (mel - left) / (center - left), (right - mel) / (right - center)
    weights = torch.where(mel <= center, up, down) * ((mel > left) & (mel < right))
    return torch.cat([weights, torch.zeros(num_bins, 1, dtype=torch.float64)], 1)


def kaldi_fbank(wave: torch.Tensor, sample_rate: int = 16000, num_mel_bins: int = 128) -> torch.Tensor:
    """Kaldi-compatible log-mel filterbank of (..., samples) -> (..., frames, num_mel_bins).

    As `compute-fbank-feats` / kaldi_native_fbank with dither 0, snip_edges, remove_dc_offset,
    pre-emphasis 0.97, window "hanning", power spectrum on the next power-of-two FFT, HTK mel
    filters from 20 Hz to Nyquist, no energy, log floored at float32 eps. Computed in float64.
    """
    length = int(sample_rate * FRAME_MS / 1000)
    shift = int(sample_rate * SHIFT_MS / 1000)
    n_fft = 1 << (length - 1).bit_length()
    if wave.shape[-1] < length:
        return wave.new_zeros(*wave.shape[:-1], 0, num_mel_bins)
    frames = wave.double().unfold(-1, length, shift)  # snip edges: only whole frames
    frames = frames - frames.mean(-1, keepdim=True)
    frames = torch.cat([frames[..., :1] * (1 - PREEMPH), frames[..., 1:] - PREEMPH * frames[..., :-1]], -1)
    frames = frames * torch.hann_window(length, periodic=False, dtype=torch.float64)
    power = torch.fft.rfft(frames, n=n_fft).abs().square()
    energies = power @ mel_banks(num_mel_bins, n_fft, sample_rate).T
    return energies.clamp(min=torch.finfo(torch.float32).eps).log().to(wave.dtype)


def fit_frames(fbank: torch.Tensor, frames: int) -> torch.Tensor:
    """Crop (frames, bins) to the first `frames` frames, or pad with zeros at the end (as AST)."""
    if fbank.shape[0] >= frames:
        return fbank[:frames]
    return torch.cat([fbank, fbank.new_zeros(frames - fbank.shape[0], fbank.shape[1])])


def spec_augment(fbank: torch.Tensor, freq_mask: int, time_mask: int) -> torch.Tensor:
    """One frequency and one time mask (zeros), widths uniform below the limits (torchaudio's
    FrequencyMasking/TimeMasking as AST uses them; a limit above the axis length is capped at
    it); returns a new tensor."""
    fbank = fbank.clone()
    for dim, limit in ((1, freq_mask), (0, time_mask)):
        if limit <= 0:
            continue
        size = fbank.shape[dim]
        width = torch.rand(()).item() * min(limit, size)
        start = int(torch.rand(()).item() * (size - width))
        fbank.narrow(dim, start, min(int(width), size - start)).zero_()
    return fbank


def add_noise(wave: torch.Tensor, noise: torch.Tensor | None, snr_db: float) -> torch.Tensor:
    """Mix in a random crop of `noise` (white noise when None) at `snr_db` dB below the signal."""
    n = wave.shape[0]
    if noise is None:
        piece = torch.randn(n)
    else:
        if noise.shape[0] < n:
            noise = noise.repeat(n // noise.shape[0] + 1)
        start = int(torch.randint(noise.shape[0] - n + 1, ()).item())
        piece = noise[start:start + n]
    signal_rms, noise_rms = wave.square().mean().sqrt(), piece.square().mean().sqrt()
    if noise_rms == 0:
        return wave
    return wave + piece * (signal_rms / noise_rms * 10 ** (-snr_db / 20))


class FrontEnd:
    """Waveform -> normalised (in_chans, target_frames, mel_bins) input, as the config describes."""

    def __init__(self, cfg: TrainConfig) -> None:
        if cfg.audio_std <= 0:
            raise ValueError(f"audio_std={cfg.audio_std} must be > 0 (see `largekernel audio-stats`)")
        self.cfg = cfg
        self.samples = (cfg.target_frames - 1) * int(cfg.sample_rate * SHIFT_MS / 1000) + \
            int(cfg.sample_rate * FRAME_MS / 1000)  # waveform length of target_frames frames

    def crop(self, wave: torch.Tensor, train: bool) -> torch.Tensor:
        """Clips longer than the input: a random window in training, the start otherwise."""
        extra = wave.shape[0] - self.samples
        if extra <= 0:
            return wave
        start = int(torch.randint(extra + 1, ()).item()) if train else 0
        return wave[start:start + self.samples]

    def raw(self, wave: torch.Tensor) -> torch.Tensor:
        """(target_frames, mel_bins) log-mel features of a (mean-removed) clip, unnormalised."""
        fbank = kaldi_fbank(wave - wave.mean(), self.cfg.sample_rate, self.cfg.mel_bins)
        return fit_frames(fbank, self.cfg.target_frames)

    def __call__(self, wave: torch.Tensor, train: bool = False) -> torch.Tensor:
        cfg = self.cfg
        x = self.raw(wave)
        if train:
            x = spec_augment(x, cfg.freq_mask, cfg.time_mask)
        x = (x - cfg.audio_mean) / (2 * cfg.audio_std)
        if train and cfg.time_roll > 0:
            x = torch.roll(x, int(torch.randint(-cfg.time_roll, cfg.time_roll + 1, ()).item()), 0)
        return x[None].expand(cfg.in_chans, -1, -1).contiguous()


# ----------------------------------------------------------------------------- datasets

class AudioDataset(Dataset):
    """(path, class) samples -> (features, label); unreadable files -> Skipped (or raise if strict).

    In training with `mixup > 0` the label is always a soft target vector (smoothed one-hot, mixed
    with a random partner clip's with probability `mixup_prob`), so batches are uniform.
    """

    def __init__(self, samples: list[Sample], classes: list[str], cfg: TrainConfig, train: bool,
                 noise_files: list[Path] = ()) -> None:
        self.samples, self.classes, self.cfg, self.train = samples, classes, cfg, train
        self.targets = [y for _, y in samples]
        self.front = FrontEnd(cfg)
        self.noise = [read_audio(p, cfg.sample_rate) for p in noise_files] if train else []

    def __len__(self) -> int:
        return len(self.samples)

    def _soft(self, label: int) -> torch.Tensor:
        n, s = len(self.classes), self.cfg.smoothing
        return torch.full((n,), s / n).index_fill_(0, torch.tensor([label]), 1 - s + s / n)

    def _augment(self, wave: torch.Tensor, label: int):
        cfg = self.cfg
        target = label
        if cfg.mixup > 0:
            target = self._soft(label)
            if torch.rand(()).item() < cfg.mixup_prob:
                j = int(torch.randint(len(self.samples), ()).item())
                lam = float(torch.distributions.Beta(cfg.mixup, cfg.mixup).sample())
                try:
                    other = self.front.crop(read_audio(self.samples[j][0], cfg.sample_rate,
                                                       self.front.samples, True), True)
                except AudioError:
                    other = None  # counted when that clip is drawn itself
                if other is not None:
                    other = torch.nn.functional.pad(other[:wave.shape[0]],
                                                    (0, max(0, wave.shape[0] - other.shape[0])))
                    wave = lam * (wave - wave.mean()) + (1 - lam) * (other - other.mean())
                    target = lam * target + (1 - lam) * self._soft(self.samples[j][1])
        if cfg.noise_prob > 0 and torch.rand(()).item() < cfg.noise_prob:
            noise = self.noise[int(torch.randint(len(self.noise), ()).item())] if self.noise else None
            lo, hi = cfg.noise_snr
            wave = add_noise(wave, noise, lo + (hi - lo) * torch.rand(()).item())
        return wave, target

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        with one_thread():
            try:
                wave = self.front.crop(read_audio(path, self.cfg.sample_rate, self.front.samples,
                                                  self.train), self.train)
            except AudioError as e:
                if self.cfg.strict:
                    raise
                return Skipped(str(path), e.reason)
            target = label
            if self.train:
                wave, target = self._augment(wave, label)
            return self.front(wave, self.train), target


def scan_folder(root: Path, classes: list[str] | None, source: str) -> tuple[list[Sample], list[str]]:
    """root/<class>/**/<audio> -> samples and classes; folders whose name starts with '_' or '.'
    (e.g. `_background_noise_`) are not classes."""
    return files.scan_folder(root, classes, source, EXTENSIONS, "audio files", "<clip>.wav", ("_", "."))


def read_list(path: Path, samples: list[Sample]) -> list[Sample]:
    """The samples named by a Speech Commands list (`word/file.wav` per line, relative to its folder)."""
    by_rel = {Path(p).relative_to(path.parent).as_posix(): (p, y) for p, y in samples}
    out = []
    for line, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        rel = text.strip()
        if not rel:
            continue
        if rel not in by_rel:
            raise ValueError(f"{path}, line {line}: {rel} is not an audio file of a class folder "
                             f"under {path.parent}; fix the list or restore the file")
        out.append(by_rel[rel])
    return out


def load_split(path: str | Path, classes: list[str] | None, part: str,
               source: str = "the class list") -> tuple[list[Sample], list[str]]:
    """Samples of one part of a dataset -> (samples, classes).

    `path`: a folder (class per subfolder), a Speech Commands list file (.txt), or a CSV. For a folder
    with Speech Commands lists, `part` picks "train" (files in neither list), "validation" or
    "testing" (the list; "testing" falls back to the validation list when there is none); a folder
    without lists gives all its files.
    """
    p = Path(path)
    if p.is_file() and p.suffix.lower() == ".txt":
        samples, classes = scan_folder(p.parent, classes, source)
        return read_list(p, samples), classes
    if p.is_file():
        return files.read_csv(p, classes, source, "audio files")
    if not p.is_dir():
        raise ValueError(f"{p} does not exist; pass a folder with one subfolder per class "
                         f"(e.g. Speech Commands), a Speech Commands list file or a CSV of path,label")
    samples, classes = scan_folder(p, classes, source)
    lists = {name.split("_")[0]: p / name for name in LISTS if (p / name).is_file()}
    if not lists:
        return samples, classes
    if part == "train":
        held = {s for f in lists.values() for s in read_list(f, samples)}
        return [s for s in samples if s not in held], classes
    name = part if part in lists else "validation"
    return (read_list(lists[name], samples) if name in lists else []), classes


def noise_files(root: str | Path | None) -> list[Path]:
    """Audio files in `root/_background_noise_` (mixed in as training noise)."""
    folder = Path(root) / NOISE_DIR if root else None
    if folder is None or not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in EXTENSIONS and p.is_file())


def read_parts(path: str | Path, part: str, classes: list[str] | None,
               source: str) -> tuple[list[Sample], list[str], bool]:
    """The `files.Reader` of audio: parts map to Speech Commands' lists (val: validation_list.txt,
    test: testing_list.txt, falling back to the validation list); has_parts when a folder has lists."""
    name = {"train": "train", "val": "validation", "test": "testing"}[part]
    samples, classes = load_split(path, classes, name, source)
    p = Path(path)
    if part == "test" and not samples:
        raise ValueError(f"{path}: its testing/validation list names no files")
    return samples, classes, p.is_dir() and any((p / n).is_file() for n in LISTS)


TRAIN_HINT = "a folder with one subfolder per class, e.g. Speech Commands, or a CSV of path,label"


def train_samples(cfg: TrainConfig) -> tuple[list[Sample], list[Sample], list[str]]:
    """(train, val, classes) as `train` uses them: Speech Commands lists, `val`, or a split."""
    return split_samples(cfg, read_parts, TRAIN_HINT)


def feature_stats(cfg: TrainConfig, max_files: int | None = None) -> dict:
    """Mean and std of the unnormalised log-mel input (padding included, as the model sees it)
    over the training files (evenly spaced `max_files` of them if given); unreadable files skipped."""
    samples, _, _ = train_samples(cfg)
    if max_files and len(samples) > max_files:
        samples = [samples[i * len(samples) // max_files] for i in range(max_files)]
    front = FrontEnd(cfg)
    total, total_sq, count, skipped = 0.0, 0.0, 0, []
    with one_thread():
        for path, _ in samples:
            try:
                x = front.raw(front.crop(read_audio(path, cfg.sample_rate, front.samples), False)).double()
            except AudioError as e:
                skipped.append(dict(path=e.path, reason=e.reason))
                continue
            total += x.sum().item()
            total_sq += x.square().sum().item()
            count += x.numel()
    if not count:
        raise ValueError(f"{cfg.train}: no readable training audio to compute statistics from")
    mean = total / count
    return dict(mean=mean, std=math.sqrt(max(total_sq / count - mean * mean, 0.0)),
                files=len(samples) - len(skipped), skipped=skipped)


# ----------------------------------------------------------------------------- command line

def _make_speech(args) -> int:
    """Write OUT/<word>/<voice>_nohash_<i>.wav (1 s, 16 kHz mono), validation_list.txt and
    testing_list.txt (whole held-out voices) and _background_noise_/ (white, pink, hum), spoken by
    24 espeak-ng voices at varied speeds and pitches."""
    from .speech_data import write_speech_dataset

    result = write_speech_dataset(args.output, args.words.split(","), args.per_word, args.seed,
                                  held_out=args.held_out, overwrite=args.overwrite)
    if args.json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    else:
        sys.stdout.write(f"wrote {result['clips']} clips of {len(result['words'])} words to "
                         f"{result['root']}: {result['train']} train, {result['validation']} "
                         f"validation ({', '.join(result['validation_speakers'])}), "
                         f"{result['testing']} testing ({', '.join(result['testing_speakers'])})\n")
    return 0


SPEECH = Command("speech", "synthesise a small spoken-word dataset (Speech Commands layout) with espeak-ng",
                 _make_speech, [
    arg("output", metavar="OUT", help="dataset folder to create"),
    arg("--words", default="yes,no,up,down,left,right", metavar="W1,W2,...",
        help="comma-separated words, one class each (default: yes,no,up,down,left,right)"),
    arg("--per-word", type=positive_int, default=48, metavar="N",
        help="clips per word, spread over 24 voices (default: 48)"),
    arg("--held-out", type=positive_int, default=2, metavar="K",
        help="voices in validation_list.txt and in testing_list.txt each (default: 2)"),
    arg("--seed", type=int, default=0, help="seed of speeds, pitches, levels, held-out voices (default: 0)"),
    arg("--overwrite", action="store_true", help="replace OUT if it is not empty"),
    arg("--json", action="store_true", help="print the counts as JSON"),
], _make_speech.__doc__ + " Train on it with `largekernel train --modality audio --data OUT`.")


def _audio_stats(args) -> int:
    """Mean and std of the unnormalised log-mel features (padding included) over the training files
    (Speech Commands: those in neither list), and the options that use them."""
    from ..engine.config import parse_overrides, resolve_config

    cfg = resolve_config(overrides=dict(parse_overrides(args.set), modality="audio", train=args.data))
    stats = feature_stats(cfg, args.max_files)
    if args.json:
        sys.stdout.write(json.dumps(stats, indent=2) + "\n")
        return 0
    sys.stdout.write(f"{stats['files']} files: log-mel mean {stats['mean']:.6f}, std {stats['std']:.6f}\n"
                     f"train with: --set audio_mean={stats['mean']:.6f} --set audio_std={stats['std']:.6f}\n")
    if stats["skipped"]:
        sys.stdout.write(f"skipped {len(stats['skipped'])} unreadable files\n")
    return 0


AUDIO_STATS = Command("audio-stats", "log-mel mean/std of a dataset's training clips (for --audio-mean/--audio-std)",
                      _audio_stats, [
    arg("--data", required=True, help="training data: folder (e.g. Speech Commands) or CSV of path,label"),
    arg("--max-files", type=positive_int, default=None, metavar="N",
        help="use N evenly spaced training files (default: all)"),
    arg("--set", action="append", default=[], metavar="KEY=VALUE",
        help="feature options as for train, e.g. --set mel_bins=64 --set target_frames=100"),
    arg("--json", action="store_true", help="print the numbers as JSON"),
], _audio_stats.__doc__)


@dataclass
class AudioOptions:
    """The audio plug-in's options: waveform rate, log-mel features, SpecAugment and noise."""

    sample_rate: int = option(16000, "clips are mixed to mono and resampled to this rate (Hz)")
    mel_bins: int = option(128, "Kaldi log-mel filterbank bins: the input's width")
    target_frames: int = option(128, "10 ms frames after padding or cropping: the input's height")
    audio_mean: float = option(-6.845978, "log-mel normalisation (x - mean) / (2 std): the mean (see `largekernel audio-stats`)")
    audio_std: float = option(5.5654526, "log-mel normalisation: the std (see `largekernel audio-stats`)")
    freq_mask: int = option(48, "SpecAugment: widest frequency mask in bins (0: none)")
    time_mask: int = option(48, "SpecAugment: widest time mask in frames (0: none)")
    time_roll: int = option(10, "random circular shift of the features by up to +-N frames")
    noise_prob: float = option(0.5, "chance of mixing in background noise (_background_noise_, else white)")
    noise_snr: tuple[float, float] = option((10.0, 30.0), "the mixed-in noise's signal-to-noise ratio range in dB, as low,high")


@register_plugin
class AudioModality(Classification):
    """Audio clips: Speech Commands / class-per-folder / CSV datasets, Kaldi log-mel features."""

    name = "audio"
    options = AudioOptions
    data_generators = (SPEECH,)
    commands = (AUDIO_STATS,)
    extensions = EXTENSIONS

    def datasets(self, cfg: TrainConfig, train: bool = True) -> DataBundle:
        """Train + val; with train=False the evaluation set (a Speech Commands root: its testing list)."""
        noise = noise_files(cfg.train) if train and cfg.train and Path(cfg.train).is_dir() else []

        def make(samples: list[Sample], classes: list[str], part: str) -> AudioDataset:
            if part == "train":
                return AudioDataset(samples, classes, cfg, True, noise)
            return AudioDataset(samples, classes, cfg, False)

        return file_datasets(cfg, train, read_parts, make, TRAIN_HINT,
                             "a folder, a Speech Commands list or a CSV")

    def example_input(self, cfg: TrainConfig, batch: int = 2, generator: torch.Generator | None = None
                      ) -> torch.Tensor:
        """Random normalised features, (batch, in_chans, target_frames, mel_bins)."""
        return torch.randn(batch, cfg.in_chans, cfg.target_frames, cfg.mel_bins, generator=generator)

    def input_contract(self, cfg: TrainConfig) -> dict[str, str]:
        return dict(input=f"float32 N x {cfg.in_chans} x {cfg.target_frames} x {cfg.mel_bins}: log-mel "
                          "features, frames down the rows",
                    preprocessing=f"mix to mono; resample to {cfg.sample_rate} Hz; remove the mean; "
                                  f"Kaldi log-mel filterbank ({cfg.mel_bins} bins, {FRAME_MS:g} ms frames "
                                  f"every {SHIFT_MS:g} ms); pad or crop to {cfg.target_frames} frames; "
                                  f"(x - {cfg.audio_mean}) / (2 x {cfg.audio_std}); the same map in "
                                  f"each of the {cfg.in_chans} channel(s)",
                    output=f"N x {len(cfg.classes or [])} class logits "
                           f"({'sigmoid' if cfg.loss == 'bce' else 'softmax'} for probabilities)")

    def load(self, path: str | Path, cfg: TrainConfig) -> torch.Tensor:
        """The evaluation input of one clip for `predict`."""
        with one_thread():
            front = FrontEnd(cfg)
            return front(front.crop(read_audio(path, cfg.sample_rate, front.samples), False))
