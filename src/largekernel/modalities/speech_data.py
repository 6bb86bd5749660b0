"""A small spoken-word dataset in the Speech Commands layout, synthesised with espeak-ng.

Each "speaker" is an espeak-ng voice with a voice variant (e.g. `en-gb-scotland+f3`); every clip
gets its own speed and pitch. Validation and testing lists hold whole speakers, so accuracy on
them measures generalisation to unheard voices.
"""
from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import numpy as np

from .audio import resample

DEFAULT_WORDS = ("yes", "no", "up", "down", "left", "right")
# 24 speakers: 8 accents x 3 voice variants (male-, female-like, Klatt-synthesised)
SPEAKERS = tuple(f"{accent}+{variant}" for accent, variants in (
    ("en-us", ("m3", "f2", "klatt")), ("en-gb", ("m1", "f4", "klatt2")),
    ("en-gb-scotland", ("m7", "f3", "klatt3")), ("en-029", ("m2", "f1", "klatt4")),
    ("en-gb-x-rp", ("m4", "f5", "klatt")), ("en-us-nyc", ("m6", "f2", "klatt2")),
    ("en-gb-x-gbclan", ("m5", "f4", "klatt3")), ("en-gb-x-gbcwmd", ("m8", "f1", "klatt4")))
    for variant in variants)
NOISES = ("white_noise", "pink_noise", "hum")


def espeak(text: str, voice: str, speed: int, pitch: int) -> tuple[np.ndarray, int]:
    """Speak `text` with espeak-ng -> (float32 mono samples, sample rate)."""
    import soundfile as sf

    exe = shutil.which("espeak-ng")
    if exe is None:
        raise FileNotFoundError("espeak-ng is not installed; install it (Debian/Ubuntu: "
                                "apt-get install espeak-ng) to synthesise speech")
    run = subprocess.run([exe, "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
                         capture_output=True, check=False)
    if run.returncode != 0 or not run.stdout:
        raise ValueError(f"espeak-ng failed for voice {voice!r}: {run.stderr.decode().strip()}")
    data, rate = sf.read(io.BytesIO(run.stdout), dtype="float32")
    return data, rate


def place(wave: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """Trim leading/trailing silence, then put the word at a random offset in `length` samples."""
    loud = np.flatnonzero(np.abs(wave) > 0.02 * np.abs(wave).max())
    word = wave[loud[0]:loud[-1] + 1][:length]
    out = np.zeros(length, dtype=np.float32)
    start = int(rng.integers(0, length - word.shape[0] + 1))
    out[start:start + word.shape[0]] = word
    return out


def noise_clip(kind: str, n: int, rate: int, rng: np.random.Generator) -> np.ndarray:
    """White noise, pink (1/f) noise or mains hum (50 Hz and harmonics), peak 0.5."""
    if kind == "white_noise":
        x = rng.standard_normal(n)
    elif kind == "pink_noise":
        spec = np.fft.rfft(rng.standard_normal(n))
        x = np.fft.irfft(spec / np.sqrt(np.maximum(np.arange(spec.shape[0]), 1)), n)
    else:
        t = np.arange(n) / rate
        x = sum(np.sin(2 * np.pi * 50 * k * t + rng.uniform(0, 2 * np.pi)) / k for k in (1, 2, 3, 5))
        x = x + 0.05 * rng.standard_normal(n)
    return (0.5 * x / np.abs(x).max()).astype(np.float32)


def write_speech_dataset(root: str | Path, words: tuple[str, ...] | list[str] = DEFAULT_WORDS,
                         per_word: int = 48, seed: int = 0, sample_rate: int = 16000,
                         held_out: int = 2, overwrite: bool = False) -> dict:
    """Write root/<word>/<speaker>_nohash_<i>.wav (1 s, 16-bit mono at `sample_rate`), the lists
    `validation_list.txt` / `testing_list.txt` (all clips of `held_out` speakers each) and
    `_background_noise_/` (three 10 s noise files); return counts.

    Clip i of a word is spoken by voice i % 24 (only the first `per_word` voices speak when
    per_word < 24) with a speed in 120..200 words/min and a pitch in 25..75 drawn from `seed`; its
    level varies (peak 0.2..0.9) and faint white noise (40..60 dB below) is added. Which of those
    voices are held out is drawn from `seed` too.
    """
    import soundfile as sf

    root = Path(root)
    words = [w.strip() for w in words if w.strip()]
    if not words or len(set(words)) != len(words):
        raise ValueError(f"words={words}: give distinct, non-empty words")
    if bad := [w for w in words if not w.replace("-", "").isalnum()]:
        raise ValueError(f"words {bad}: a word is also a folder name; use letters and digits only")
    speakers = SPEAKERS[:min(per_word, len(SPEAKERS))]  # the voices that say something
    if not 1 <= held_out <= (len(speakers) - 1) // 2:
        raise ValueError(f"held_out={held_out}: with {len(speakers)} voices (per_word={per_word}) "
                         f"hold out 1..{(len(speakers) - 1) // 2} voices per list; raise per_word")
    if root.exists() and any(root.iterdir()):
        if not overwrite:
            raise ValueError(f"{root} already exists and is not empty; pass overwrite=True "
                             f"(--overwrite) or choose another folder")
        shutil.rmtree(root)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(speakers))
    val_speakers = {speakers[i] for i in order[:held_out]}
    test_speakers = {speakers[i] for i in order[held_out:2 * held_out]}
    lists: dict[str, list[str]] = {"validation": [], "testing": []}
    for word in words:
        (root / word).mkdir(parents=True)
        for i in range(per_word):
            voice = speakers[i % len(speakers)]
            speed, pitch = int(rng.integers(120, 201)), int(rng.integers(25, 76))
            wave, rate = espeak(word, voice, speed, pitch)
            wave = place(resample(wave, rate, sample_rate), sample_rate, rng)
            wave *= rng.uniform(0.2, 0.9) / np.abs(wave).max()
            wave += rng.standard_normal(wave.shape[0]).astype(np.float32) * \
                np.sqrt(np.mean(wave ** 2)) * 10 ** (-rng.uniform(40, 60) / 20)
            speaker = voice.replace("+", "-")
            name = f"{word}/{speaker}_nohash_{i // len(speakers)}.wav"
            sf.write(root / name, np.clip(wave, -1, 1), sample_rate, subtype="PCM_16")
            if voice in val_speakers:
                lists["validation"].append(name)
            elif voice in test_speakers:
                lists["testing"].append(name)
    for part, names in lists.items():
        (root / f"{part}_list.txt").write_text("".join(n + "\n" for n in names))
    (root / "_background_noise_").mkdir()
    for kind in NOISES:
        sf.write(root / "_background_noise_" / f"{kind}.wav",
                 noise_clip(kind, 10 * sample_rate, sample_rate, rng), sample_rate, subtype="PCM_16")
    total = len(words) * per_word
    return dict(root=str(root), words=words, clips=total,
                train=total - len(lists["validation"]) - len(lists["testing"]),
                validation=len(lists["validation"]), testing=len(lists["testing"]),
                validation_speakers=sorted(val_speakers), testing_speakers=sorted(test_speakers),
                noise=[f"{k}.wav" for k in NOISES])
