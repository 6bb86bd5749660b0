"""Images as cameras, scanners and editors write them: EXIF, CMYK, 16-bit, palettes, animations, TIFF, size."""
from __future__ import annotations

import logging
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from largekernel.modalities.image import ImageDataset
from largekernel.modalities.image_io import read_image

RED, BLUE = (255, 0, 0), (0, 0, 255)


def left_red_right_blue(w: int = 8, h: int = 4) -> Image.Image:
    im = Image.new("RGB", (w, h), BLUE)
    im.paste(RED, (0, 0, w // 2, h))
    return im


# ---------------------------------------------------------------------------------------- JPEG

@pytest.mark.parametrize("orientation, expected", [
    (1, [[RED, BLUE]]),  # as stored
    (3, [[BLUE, RED]]),  # rotated 180
    (6, [[RED], [BLUE]]),  # stored rotated: displayed turned 90 degrees clockwise
    (8, [[BLUE], [RED]]),  # 90 degrees counter-clockwise
])
def test_exif_orientation_is_applied(tmp_path, orientation, expected):
    path = tmp_path / "photo.jpg"
    exif = Image.Exif()
    exif[0x0112] = orientation
    left_red_right_blue(64, 32).save(path, quality=95, exif=exif)
    x = read_image(path)
    rows, cols = len(expected), len(expected[0])
    assert x.shape == ((3, 32, 64) if rows == 1 else (3, 64, 32))
    h, w = x.shape[1:]
    for r in range(rows):
        for c in range(cols):  # the centre of each half, away from JPEG's edge ringing
            pixel = x[:, int((r + 0.5) * h / rows), int((c + 0.5) * w / cols)] * 255
            assert torch.allclose(pixel, torch.tensor(expected[r][c], dtype=torch.float32), atol=8)


def test_cmyk_jpeg_reads_as_rgb(tmp_path):
    """CMYK (0, 255, 255, 0) is red; Pillow writes Adobe-style inverted CMYK JPEGs and reads them back."""
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "print.jpg", quality=95)
    with Image.open(tmp_path / "print.jpg") as im:
        assert im.mode == "CMYK"
    x = read_image(tmp_path / "print.jpg") * 255
    assert torch.allclose(x[:, 8, 8], torch.tensor(RED, dtype=torch.float32), atol=4)


def test_grayscale_jpeg(tmp_path):
    Image.new("L", (16, 16), 77).save(tmp_path / "g.jpg", quality=95)
    x = read_image(tmp_path / "g.jpg")
    assert x.shape == (3, 16, 16) and torch.allclose(x * 255, torch.full_like(x, 77), atol=1)
    assert read_image(tmp_path / "g.jpg", in_chans=1).shape == (1, 16, 16)


# ---------------------------------------------------------------------------------------- PNG

def test_16_bit_png_uses_the_16_bit_range_even_when_dark(tmp_path):
    """A dark 16-bit scan whose samples all stay below 256: still 1/65535 per step, not 1/255."""
    a = np.array([[0, 100], [200, 255]], dtype=np.uint16)
    Image.fromarray(a).save(tmp_path / "dark16.png")
    with Image.open(tmp_path / "dark16.png") as im:
        assert im.mode == "I;16"
    x = read_image(tmp_path / "dark16.png", in_chans=1)
    assert torch.equal(x[0], torch.from_numpy(a.astype(np.float32) / 65535))


def _png_rgb16(path, rgb: np.ndarray) -> None:
    """A 16-bit-per-channel RGB PNG written by the PNG definition (Pillow cannot write one)."""
    h, w, _ = rgb.shape
    raw = b"".join(b"\0" + rgb[r].astype(">u2").tobytes() for r in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_16_bit_rgb_png(tmp_path):
    rgb = np.zeros((2, 2, 3), np.uint16)
    rgb[0, 0] = (65535, 0, 0)
    rgb[1, 1] = (0, 32896, 65535)  # 32896 = 128.5 * 256: Pillow keeps the high byte, 128
    _png_rgb16(tmp_path / "rgb16.png", rgb)
    x = read_image(tmp_path / "rgb16.png") * 255
    assert x[:, 0, 0].tolist() == [255, 0, 0] and x[:, 1, 1].tolist() == [0, 128, 255]


def test_palette_png_with_transparency_is_composited_on_white(tmp_path):
    im = Image.new("P", (2, 1))
    im.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    im.putdata([0, 1])
    im.save(tmp_path / "p.png", transparency=1)  # index 1 (blue) fully transparent: a tRNS chunk
    x = read_image(tmp_path / "p.png") * 255
    assert x[:, 0, 0].tolist() == [255, 0, 0] and x[:, 0, 1].tolist() == [255, 255, 255]


def test_partial_alpha_png(tmp_path):
    Image.new("RGBA", (1, 1), (0, 0, 0, 128)).save(tmp_path / "a.png")  # black at 128/255 opacity
    x = read_image(tmp_path / "a.png") * 255
    assert torch.allclose(x[:, 0, 0], torch.full((3,), 255 - 128.0), atol=1)  # over white
    Image.new("LA", (1, 1), (0, 128)).save(tmp_path / "la.png")
    assert torch.allclose(read_image(tmp_path / "la.png", 1)[:, 0, 0] * 255, torch.tensor([127.0]), atol=1)


# ---------------------------------------------------------------------------------------- animations, TIFF

@pytest.mark.parametrize("ext", ["gif", "webp", "tiff"])
def test_animated_and_multi_page_files_give_the_first_frame_said_once(tmp_path, ext, caplog):
    from PIL import features

    if ext == "webp" and not features.check("webp"):
        pytest.skip("Pillow built without WebP")
    frames = [Image.new("RGB", (8, 8), c) for c in (RED, BLUE, (0, 255, 0))]
    path = tmp_path / f"anim.{ext}"
    frames[0].save(path, save_all=True, append_images=frames[1:], **({"lossless": True} if ext == "webp" else {}))
    with caplog.at_level(logging.WARNING, logger="largekernel.modalities.image_io"):
        first = read_image(path) * 255
        read_image(path)
    assert first[:, 4, 4].tolist() == list(RED)
    told = [r.getMessage() for r in caplog.records]
    assert len(told) == 1 and told[0].endswith("with 3 frames; using the first")


@pytest.mark.parametrize("mode, values, expected", [
    ("I;16", np.array([[0, 65535]], np.uint16), [0.0, 1.0]),
    ("F", np.array([[0.25, 1.0]], np.float32), [0.25, 1.0]),
    ("RGB", None, [1.0, 0.0]),
    ("CMYK", None, [1.0, 0.0]),
])
def test_tiff_sample_formats(tmp_path, mode, values, expected):
    path = tmp_path / "scan.tif"
    if values is not None:
        Image.fromarray(values).save(path)
    else:
        Image.new(mode, (2, 1), (0, 255, 255, 0) if mode == "CMYK" else RED).save(path)
    with Image.open(path) as im:
        assert im.mode == mode
    x = read_image(path)
    assert x[0, 0].tolist() == (expected if values is not None else [1.0, 1.0])
    if values is None:
        assert x[1, 0].tolist() == [0.0, 0.0]  # red: no green


# ---------------------------------------------------------------------------------------- size limit

def test_images_above_the_pixel_limit_are_refused_before_decoding(tmp_path, monkeypatch):
    Image.new("RGB", (300, 200)).save(tmp_path / "big.png")
    monkeypatch.setenv("LARGEKERNEL_MAX_PIXELS", "50000")
    with pytest.raises(ValueError, match=r"big\.png: 300 x 200 pixels \(0 megapixels\) is above the limit "
                                         r"of 0\.05 megapixels; downscale it first .* LARGEKERNEL_MAX_PIXELS"):
        read_image(tmp_path / "big.png")
    monkeypatch.setenv("LARGEKERNEL_MAX_PIXELS", "60000")
    assert read_image(tmp_path / "big.png").shape == (3, 200, 300)


def test_a_decompression_bomb_is_a_named_error_not_a_crash(tmp_path, monkeypatch):
    """Beyond Pillow's own hard limit (2 x MAX_IMAGE_PIXELS) Pillow refuses to open the file."""
    Image.new("1", (400, 300)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ValueError, match=r"bomb\.png: Image size \(120000 pixels\) exceeds limit of 2000 "
                                         r"pixels.*; downscale it first"):
        read_image(tmp_path / "bomb.png")
    data = ImageDataset([(str(tmp_path / "bomb.png"), 0)], ["a"], lambda x: x)
    assert "exceeds limit" in data[0].reason  # skipped with the reason, the run goes on

