"""Tests for hardscore_server.pipeline.preprocess: image bytes / pixels -> normalised float32
[C, H, W]."""

from __future__ import annotations

import io
import pickle
import struct
import warnings
import zlib
from typing import Any

import numpy as np
import pytest
from PIL import Image

from hardscore_server.pipeline.preprocess import (
    InputSpec,
    SampleError,
    decode_image,
    encode_png,
    from_pixels,
    to_model_input,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def spec(
    height: int = 8,
    width: int = 8,
    channels: int = 3,
    resize: str = "resize",
    max_image_pixels: int = 50_000_000,
    imagenet: bool = False,
) -> InputSpec:
    """A spec; without ``imagenet`` mean 0 and std 1, so the output is pixel / 255 exactly."""
    mean = IMAGENET_MEAN if imagenet else (0.0,) * channels
    std = IMAGENET_STD if imagenet else (1.0,) * channels
    return InputSpec(channels, height, width, mean, std, resize, max_image_pixels)


def encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def noise(height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    shape = (height, width) if channels == 0 else (height, width, channels)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def expected_input(image: Image.Image, mean: tuple[float, ...], std: tuple[float, ...]):
    """Reference normalisation computed independently: float64, then cast."""
    values = np.asarray(image, dtype=np.float64)
    if values.ndim == 2:
        values = values[:, :, None]
    out = (values / 255.0 - np.array(mean)) / np.array(std)
    return out.transpose(2, 0, 1).astype(np.float32)


def png_file(
    width: int, height: int, bit_depth: int = 8, color_type: int = 2, rows: bytes | None = None
) -> bytes:
    """A hand-made PNG: IHDR with any size, IDAT only when ``rows`` (filter bytes included)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(rows)) if rows is not None else b""
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + idat + chunk(b"IEND", b"")


# ---------------------------------------------------------------- normalisation and resizing


def test_hand_made_2x2_rgb_is_normalised_to_hand_computed_values() -> None:
    pixels = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [51, 102, 204]]], np.uint8)
    s = spec(2, 2, imagenet=True)
    # (v / 255 - mean) / std, by hand: 255 -> 1, 51 -> 0.2, 102 -> 0.4, 204 -> 0.8.
    r = [(1 - 0.485) / 0.229, (0 - 0.485) / 0.229, (0 - 0.485) / 0.229, (0.2 - 0.485) / 0.229]
    g = [(0 - 0.456) / 0.224, (1 - 0.456) / 0.224, (0 - 0.456) / 0.224, (0.4 - 0.456) / 0.224]
    b = [(0 - 0.406) / 0.225, (0 - 0.406) / 0.225, (1 - 0.406) / 0.225, (0.8 - 0.406) / 0.225]
    assert r[0] == pytest.approx(2.2489083) and b[3] == pytest.approx(1.7511111)
    expected = np.array([r, g, b], np.float64).reshape(3, 2, 2)
    for out in (from_pixels(pixels, s), decode_image(encode_png(pixels), s)):
        assert out.dtype == np.float32 and out.shape == (3, 2, 2)
        assert out.flags.c_contiguous
        np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


def test_normalisation_is_float32_div255_sub_mean_div_std_like_torchvision() -> None:
    pixels = noise(5, 7)
    s = spec(5, 7, imagenet=True)
    ref = pixels.astype(np.float32).transpose(2, 0, 1) / np.float32(255)
    mean = np.array(IMAGENET_MEAN, np.float32)[:, None, None]
    std = np.array(IMAGENET_STD, np.float32)[:, None, None]
    ref = (ref - mean) / std
    np.testing.assert_array_equal(from_pixels(pixels, s), ref)


@pytest.mark.parametrize("size", [(1, 1), (7, 300), (500, 3), (32, 48), (37, 41), (640, 480)])
@pytest.mark.parametrize("channels", [1, 3])
def test_resize_gives_exact_spec_shape_from_any_size(size: tuple[int, int], channels: int) -> None:
    height, width = size
    out = from_pixels(noise(height, width), spec(32, 48, channels))
    assert out.shape == (channels, 32, 48) and out.dtype == np.float32
    assert np.all((out >= 0) & (out <= 1))


def test_resize_of_a_uniform_image_keeps_its_exact_value() -> None:
    pixels = np.empty((13, 29, 3), np.uint8)
    pixels[:] = (10, 20, 30)
    for resize in ("resize", "resize_shorter_center_crop"):
        out = from_pixels(pixels, spec(8, 8, resize=resize))
        expected = np.array([10, 20, 30], np.float32) / np.float32(255)
        np.testing.assert_array_equal(out[:, 3, 5], expected)
        assert np.ptp(out, axis=(1, 2)).max() == 0


def test_resize_is_pillow_bilinear_to_width_x_height() -> None:
    pixels = noise(30, 50)
    expected = Image.fromarray(pixels).resize((12, 9), Image.Resampling.BILINEAR)
    out = from_pixels(pixels, spec(9, 12))
    np.testing.assert_array_equal(out, expected_input(expected, (0, 0, 0), (1, 1, 1)))


@pytest.mark.parametrize(
    ("image_hw", "spec_hw", "resized_wh", "crop_box"),
    [
        # 300x400 (H x W): shorter side 300 -> 256, longer int(256 * 400 / 300) = 341;
        # top round(32 / 2) = 16, left round(117 / 2) = round(58.5) = 58 (half to even).
        ((300, 400), (224, 224), (341, 256), (58, 16, 282, 240)),
        ((400, 300), (224, 224), (256, 341), (16, 58, 240, 282)),
        # Non-square input: shorter side to round(320 * 256 / 224) = 366, longer 488.
        ((300, 400), (224, 320), (488, 366), (84, 71, 404, 295)),
        # Shorter side already 256: no resize, crop only.
        ((256, 300), (224, 224), (300, 256), (38, 16, 262, 240)),
    ],
)
def test_resize_shorter_center_crop_equals_explicit_resize_then_crop(
    image_hw: tuple[int, int],
    spec_hw: tuple[int, int],
    resized_wh: tuple[int, int],
    crop_box: tuple[int, int, int, int],
) -> None:
    pixels = noise(*image_hw, seed=3)
    s = spec(*spec_hw, resize="resize_shorter_center_crop", imagenet=True)
    image = Image.fromarray(pixels)
    if image.size != resized_wh:
        image = image.resize(resized_wh, Image.Resampling.BILINEAR)
    expected = expected_input(image.crop(crop_box), IMAGENET_MEAN, IMAGENET_STD)
    out = from_pixels(pixels, s)
    assert out.shape == (3, *spec_hw)
    np.testing.assert_allclose(out, expected, rtol=0, atol=2e-6)


# ---------------------------------------------------------------- formats and modes


def test_grayscale_is_replicated_for_three_channels_and_kept_for_one() -> None:
    gray = noise(6, 5, channels=0)
    data = encode(Image.fromarray(gray), "PNG")
    three = decode_image(data, spec(6, 5, 3))
    one = decode_image(data, spec(6, 5, 1))
    assert three.shape == (3, 6, 5) and one.shape == (1, 6, 5)
    np.testing.assert_array_equal(one[0], gray / np.float32(255))
    for c in range(3):
        np.testing.assert_array_equal(three[c], one[0])


def test_rgb_to_one_channel_is_pillow_itu_601_luma() -> None:
    pixels = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [100, 150, 200]]], np.uint8)
    out = from_pixels(pixels, spec(1, 4, 1))
    # L = R * 299/1000 + G * 587/1000 + B * 114/1000, rounded: 76, 150, 29, 140.75 -> 141.
    np.testing.assert_array_equal(out[0, 0] * 255, np.array([76, 150, 29, 141], np.float32))


def test_rgba_alpha_is_dropped_keeping_the_stored_colour() -> None:
    rgba = np.array([[[200, 100, 50, 0], [10, 20, 30, 255]]], np.uint8)
    out = decode_image(encode_png(rgba), spec(1, 2))
    np.testing.assert_array_equal(out[:, 0, 0] * 255, np.array([200, 100, 50], np.float32))
    np.testing.assert_array_equal(out[:, 0, 1] * 255, np.array([10, 20, 30], np.float32))
    la = Image.fromarray(np.array([[[90, 0], [40, 255]]], np.uint8), mode="LA")
    out = decode_image(encode(la, "PNG"), spec(1, 2, 1))
    np.testing.assert_array_equal(out[0, 0] * 255, np.array([90, 40], np.float32))


@pytest.mark.parametrize("transparency", [0, bytes([0, 128, 255])])
def test_palette_with_transparency_gives_palette_colours_without_warning(
    transparency: int | bytes,
) -> None:
    image = Image.new("P", (3, 1))
    image.putpalette([200, 100, 50, 10, 20, 30, 0, 255, 0])
    image.putdata([0, 1, 2])
    data = encode(image, "PNG", transparency=transparency)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rgb = decode_image(data, spec(1, 3))
        gray = decode_image(data, spec(1, 3, 1))
    assert Image.open(io.BytesIO(data)).info["transparency"] == transparency
    np.testing.assert_array_equal(rgb[:, 0, :].T * 255, [[200, 100, 50], [10, 20, 30], [0, 255, 0]])
    # Luma of the palette colours: 200*.299+100*.587+50*.114 = 124.2 -> 124; 18.15 -> 18; 149.7.
    np.testing.assert_array_equal(gray[0, 0] * 255, np.array([124, 18, 150], np.float32))


def test_16bit_grayscale_png_keeps_the_high_byte_not_clipped() -> None:
    k = np.arange(256, dtype=np.uint16).reshape(16, 16)
    data = encode(Image.fromarray(k * 257), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    out = decode_image(data, spec(16, 16, 1))
    np.testing.assert_array_equal(out[0], k.astype(np.float32) / np.float32(255))  # 257k -> k
    assert out[0, 15, 15] == 1.0  # 65535 -> 255 -> 1.0
    three = decode_image(data, spec(16, 16, 3))
    np.testing.assert_array_equal(three, np.repeat(out, 3, axis=0))
    # Between multiples: high byte, so 255 -> 0, 256 -> 1, 511 -> 1, 65280 -> 255.
    odd = np.array([[255, 256, 511, 65280]], np.uint16)
    out = decode_image(encode(Image.fromarray(odd), "PNG"), spec(1, 4, 1))
    np.testing.assert_array_equal(out[0, 0] * 255, np.array([0, 1, 1, 255], np.float32))


def test_16bit_big_endian_image_and_16bit_rgb_png_agree_with_16bit_grayscale() -> None:
    big = Image.frombytes("I;16B", (3, 1), np.array([[257, 32896, 65535]], ">u2").tobytes())
    np.testing.assert_array_equal(
        to_model_input(big, spec(1, 3, 1))[0, 0] * 255, np.array([1, 128, 255], np.float32)
    )
    # 16-bit RGB PNG, built by hand (Pillow cannot write one): channels 257*k -> k.
    rgb16 = np.array([[[257, 514, 65535], [0, 25700, 32896]]], ">u2")
    data = png_file(2, 1, bit_depth=16, color_type=2, rows=b"\x00" + rgb16.tobytes())
    out = decode_image(data, spec(1, 2))
    np.testing.assert_array_equal(out[:, 0, :].T * 255, [[1, 2, 255], [0, 100, 128]])


def test_cmyk_jpeg_decodes_to_rgb() -> None:
    cmyk = np.zeros((16, 32, 4), np.uint8)
    cmyk[:, 16:, 0] = 255  # right half pure cyan, left half no ink (white)
    data = encode(Image.fromarray(cmyk, mode="CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    out = decode_image(data, spec(16, 32))
    np.testing.assert_allclose(out[:, 8, 4], [1, 1, 1], atol=3 / 255)
    np.testing.assert_allclose(out[:, 8, 28], [0, 1, 1], atol=3 / 255)


@pytest.mark.parametrize(
    ("fmt", "params"),
    [
        ("WEBP", {"lossless": True}),
        ("TIFF", {}),
        ("TIFF", {"compression": "tiff_lzw"}),
        ("BMP", {}),
        ("PNG", {"optimize": True}),
    ],
)
def test_lossless_formats_equal_the_png_path(fmt: str, params: dict[str, Any]) -> None:
    pixels = noise(20, 30, seed=5)
    data = encode(Image.fromarray(pixels), fmt, **params)
    s = spec(8, 12, imagenet=True)
    np.testing.assert_array_equal(decode_image(data, s), decode_image(encode_png(pixels), s))


def test_lossy_formats_decode_to_plausible_values() -> None:
    pixels = np.zeros((32, 32, 3), np.uint8)
    pixels[:, :, 0] = 200
    pixels[:, :, 2] = 40
    for fmt in ("JPEG", "WEBP"):
        out = decode_image(encode(Image.fromarray(pixels), fmt, quality=90), spec(8, 8))
        np.testing.assert_allclose(out[:, 4, 4] * 255, [200, 0, 40], atol=4)


def test_gif_first_frame_is_used() -> None:
    frames = [Image.new("RGB", (8, 8), color) for color in ((255, 0, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 2
    out = decode_image(data, spec(4, 4))
    np.testing.assert_array_equal(out[:, 2, 2], [1, 0, 0])


def test_camera_multi_picture_jpeg_uses_its_first_picture() -> None:
    pictures = [Image.new("RGB", (8, 8), color) for color in ((255, 0, 0), (0, 0, 255))]
    data = encode(pictures[0], "MPO", save_all=True, append_images=pictures[1:])
    assert Image.open(io.BytesIO(data)).format == "MPO"
    out = decode_image(data, spec(4, 4))
    np.testing.assert_allclose(out[:, 2, 2], [1, 0, 0], atol=2 / 255)


def test_bilevel_int32_and_float_images_map_to_0_255() -> None:
    bilevel = Image.fromarray(np.array([[True, False]]))
    out = decode_image(encode(bilevel, "PNG"), spec(1, 2, 1))
    np.testing.assert_array_equal(out[0, 0], [1, 0])
    int32 = Image.fromarray(np.array([[-5, 0, 100, 300]], np.int32))
    assert int32.mode == "I"
    out = decode_image(encode(int32, "TIFF"), spec(1, 4, 1))
    clipped = np.array([0, 0, 100, 255], np.float32)
    np.testing.assert_array_equal(out[0, 0] * 255, clipped)
    floats = Image.fromarray(np.array([[-2.0, 0.0, 100.0, 300.0]], np.float32))
    out = decode_image(encode(floats, "TIFF"), spec(1, 4, 1))
    np.testing.assert_array_equal(out[0, 0] * 255, clipped)


def test_float_image_with_nan_is_refused_with_reason_value() -> None:
    floats = Image.fromarray(np.array([[1.0, np.nan]], np.float32))
    with pytest.raises(SampleError) as info:
        decode_image(encode(floats, "TIFF"), spec(1, 2, 1))
    assert info.value.reason == "value"


def test_exif_orientation_6_is_honoured() -> None:
    pixels = np.zeros((16, 32, 3), np.uint8)  # stored 32 wide, 16 high
    pixels[:, :16] = (255, 0, 0)  # left half red
    pixels[:, 16:] = (0, 0, 255)  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = encode(Image.fromarray(pixels), "JPEG", quality=95, exif=exif.tobytes())
    out = decode_image(data, spec(32, 16))  # displayed 16 wide, 32 high
    # Clockwise rotation brings the stored left (red) to the top, right (blue) to the bottom.
    np.testing.assert_allclose(out[:, 4, 8], [1, 0, 0], atol=0.03)
    np.testing.assert_allclose(out[:, 27, 8], [0, 0, 1], atol=0.03)
    plain = decode_image(encode(Image.fromarray(pixels), "JPEG", quality=95), spec(32, 16))
    np.testing.assert_allclose(plain[:, 4, 4], [1, 0, 0], atol=0.03)  # squeezed, unrotated
    np.testing.assert_allclose(plain[:, 4, 12], [0, 0, 1], atol=0.03)


# ---------------------------------------------------------------- raw pixels


@pytest.mark.parametrize("shape", [(23, 17), (23, 17, 1), (23, 17, 3), (23, 17, 4)])
@pytest.mark.parametrize("resize", ["resize", "resize_shorter_center_crop"])
@pytest.mark.parametrize("channels", [1, 3])
def test_raw_uint8_pixels_equal_the_png_path_exactly(
    shape: tuple[int, ...], resize: str, channels: int
) -> None:
    pixels = np.random.default_rng(7).integers(0, 256, shape, dtype=np.uint8)
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((0.5,), (0.25,))
    s = InputSpec(channels, 10, 12, mean, std, resize)
    np.testing.assert_array_equal(from_pixels(pixels, s), decode_image(encode_png(pixels), s))


def test_raw_pixels_read_only_and_strided_are_accepted_and_not_modified() -> None:
    pixels = noise(12, 10)
    frozen = pixels.copy()
    frozen.flags.writeable = False
    strided = np.ascontiguousarray(pixels.transpose(1, 0, 2)).transpose(1, 0, 2)
    assert not strided.flags.c_contiguous
    s = spec(6, 6)
    np.testing.assert_array_equal(from_pixels(frozen, s), from_pixels(pixels, s))
    np.testing.assert_array_equal(from_pixels(strided, s), from_pixels(pixels, s))
    np.testing.assert_array_equal(frozen, pixels)


def test_float32_chw_passes_through_unchanged() -> None:
    values = np.random.default_rng(1).normal(0, 3, (3, 10, 12)).astype(np.float32)
    values[0, 0, 0] = np.finfo(np.float32).max
    out = from_pixels(values, spec(10, 12))
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, values)
    big_endian = from_pixels(values.astype(">f4"), spec(10, 12))
    assert big_endian.dtype == np.dtype("=f4")
    np.testing.assert_array_equal(big_endian, values)


@pytest.mark.parametrize(
    ("pixels", "reason", "message"),
    [
        (
            np.zeros((3, 32, 32), np.uint8),
            "shape",
            "pixels: uint8 tensor must be [H, W, C] with C in {1, 3, 4}, got shape [3, 32, 32]",
        ),
        (np.zeros((4, 4, 2), np.uint8), "shape", "got shape [4, 4, 2]"),
        (np.zeros(16, np.uint8), "shape", "must be [H, W] or [H, W, C]"),
        (np.zeros((1, 4, 4, 3), np.uint8), "shape", "got shape [1, 4, 4, 3]"),
        (
            np.zeros((3, 8, 9), np.float32),
            "shape",
            "pixels: float32 tensor must be [C, H, W] = [3, 8, 8] (already resized and "
            "normalised), got shape [3, 8, 9]",
        ),
        (np.zeros((8, 8, 3), np.float32), "shape", "got shape [8, 8, 3]"),
        (np.zeros((1, 8, 8), np.float32), "shape", "got shape [1, 8, 8]"),
        (np.zeros((3, 8, 8), np.float64), "dtype", "got float64 with shape [3, 8, 8]"),
        (np.zeros((8, 8, 3), np.uint16), "dtype", "got uint16"),
        (np.zeros((8, 8, 3), np.int32), "dtype", "got int32"),
        (np.zeros((8, 8), bool), "dtype", "got bool"),
        ([[0, 1], [2, 3]], "dtype", "expected a numpy array, got list"),
        (np.zeros((0, 5, 3), np.uint8), "empty", "shape [0, 5, 3]"),
        (np.zeros((5, 0), np.uint8), "empty", "shape [5, 0]"),
        (np.full((3, 8, 8), np.nan, np.float32), "value", "got 192 NaN and 0 infinite"),
        (
            np.pad(np.full((1, 1, 1), -np.inf, np.float32), ((2, 0), (0, 7), (3, 4))),
            "value",
            "got 0 NaN and 1 infinite values (first at [2, 0, 3])",
        ),
    ],
)
def test_wrong_pixels_give_sample_error_with_reason(pixels: Any, reason: str, message: str) -> None:
    with pytest.raises(SampleError) as info:
        from_pixels(pixels, spec(8, 8))
    assert info.value.reason == reason
    assert message in info.value.message


def test_raw_pixels_above_the_pixel_limit_give_size() -> None:
    with pytest.raises(SampleError) as info:
        from_pixels(np.zeros((20, 20, 3), np.uint8), spec(max_image_pixels=399))
    assert info.value.reason == "size"
    assert "20x20 = 400 pixels exceeds the limit of 399" in info.value.message
    assert from_pixels(np.zeros((20, 20, 3), np.uint8), spec(max_image_pixels=400)).shape


def test_encode_png_refuses_what_from_pixels_refuses() -> None:
    for pixels, reason in [
        (np.zeros((3, 4, 4, 1), np.uint8), "shape"),
        (np.zeros((4, 4), np.float32), "dtype"),
        (np.zeros((0, 4), np.uint8), "empty"),
    ]:
        with pytest.raises(SampleError) as info:
            encode_png(pixels)  # type: ignore[arg-type]
        assert info.value.reason == reason


# ---------------------------------------------------------------- hostile bytes


MAGIC_PREFIXES = [
    b"",
    b"\x89PNG\r\n\x1a\n",
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
    b"\xff\xd8\xff",
    b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
    b"GIF89a",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
    b"RIFF\x00\x01\x00\x00WEBPVP8 ",
]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_random_bytes_give_only_sample_error() -> None:
    rng = np.random.default_rng(12345)
    lengths = [1, 2, 7, 16, 33, 100, 517, 4096]
    s = spec(4, 4)
    reasons: dict[str, int] = {}
    for trial in range(200):
        body = rng.integers(0, 256, lengths[trial % len(lengths)], dtype=np.uint8).tobytes()
        prefix = MAGIC_PREFIXES[trial % len(MAGIC_PREFIXES)]
        with pytest.raises(SampleError) as info:
            decode_image(prefix + body, s)
        reasons[info.value.reason] = reasons.get(info.value.reason, 0) + 1
        if not prefix:
            assert info.value.reason == "decode"
            assert "cannot identify image file" in info.value.message
    assert set(reasons) <= {"decode", "size", "empty"}


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_corrupted_valid_files_give_a_valid_input_or_sample_error() -> None:
    rng = np.random.default_rng(99)
    image = Image.fromarray(noise(24, 24, seed=2))
    files = [
        encode(image, "PNG"),
        encode(image, "JPEG", quality=80),
        encode(image, "GIF"),
        encode(image, "BMP"),
        encode(image, "TIFF"),
        encode(image, "WEBP", quality=80),
    ]
    s = spec(4, 4)
    for trial in range(120):
        data = bytearray(files[trial % len(files)])
        for position in rng.integers(0, len(data), 1 + trial % 4):
            data[position] = int(rng.integers(0, 256))
        try:
            out = decode_image(bytes(data), s)
        except SampleError:
            continue
        assert out.shape == (3, 4, 4) and np.isfinite(out).all()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "JPEG progressive", "WEBP", "BMP", "TIFF"])
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_truncated_files_give_sample_error(fmt: str) -> None:
    image = Image.fromarray(noise(64, 64, seed=4))  # noise: pixel data fills the file
    params: dict[str, Any] = {"quality": 95} if fmt.startswith("JPEG") else {}
    if fmt == "JPEG progressive":
        params["progressive"] = True
    data = encode(image, fmt.split()[0], **params)
    s = spec(8, 8)
    assert decode_image(data, s).shape == (3, 8, 8)
    for fraction in (0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99):
        with pytest.raises(SampleError) as info:
            decode_image(data[: max(1, int(len(data) * fraction))], s)
        assert info.value.reason == "decode"
    if fmt == "PNG":
        with pytest.raises(SampleError, match="truncated"):
            decode_image(data[: len(data) // 2], s)


def test_empty_bytes_give_reason_empty() -> None:
    for data in (b"", bytearray(), memoryview(b"")):
        with pytest.raises(SampleError) as info:
            decode_image(data, spec())  # type: ignore[arg-type]
        assert info.value.reason == "empty"


def test_non_bytes_give_reason_dtype() -> None:
    with pytest.raises(SampleError) as info:
        decode_image("not bytes", spec())  # type: ignore[arg-type]
    assert info.value.reason == "dtype"
    assert "expected bytes, got str" in info.value.message


def test_decompression_bomb_header_is_refused_with_size() -> None:
    # 100000 x 100000: far above both the spec's limit and Pillow's own guard.
    bomb = png_file(100_000, 100_000)
    assert len(bomb) < 100
    with pytest.raises(SampleError) as info:
        decode_image(bomb, spec())
    assert info.value.reason == "size"
    # 9000 x 9000 = 81 M pixels: above the spec's 50 M, below Pillow's guard. The header has no
    # pixel data, so "size" (not "decode") proves the limit is checked before decoding.
    with pytest.raises(SampleError) as info:
        decode_image(png_file(9000, 9000), spec())
    assert info.value.reason == "size"
    assert "9000x9000 = 81000000 pixels exceeds the limit of 50000000" in info.value.message


def test_small_pixel_limit_refuses_a_real_image_with_size() -> None:
    data = encode_png(noise(20, 20))
    with pytest.raises(SampleError) as info:
        decode_image(data, spec(max_image_pixels=399))
    assert info.value.reason == "size"
    assert decode_image(data, spec(max_image_pixels=400)).shape == (3, 8, 8)


def test_zero_width_or_height_gives_sample_error() -> None:
    # A GIF whose screen and frame are 0 x 5 pixels.
    gif = b"GIF89a" + struct.pack("<HHBBB", 0, 5, 0, 0, 0)
    gif += b"," + struct.pack("<HHHHB", 0, 0, 0, 5, 0) + b"\x02\x02\x44\x01\x00;"
    for data in (png_file(0, 5), png_file(5, 0), gif):
        with pytest.raises(SampleError) as info:
            decode_image(data, spec())
        # Pillow refuses these headers itself ("decode"); any it opens are caught as "empty".
        assert info.value.reason in ("decode", "empty")
    with pytest.raises(SampleError) as info:
        to_model_input(Image.new("RGB", (0, 3)), spec())
    assert info.value.reason == "empty"


def test_formats_outside_the_protocol_are_not_opened() -> None:
    ppm = encode(Image.new("RGB", (4, 4)), "PPM")
    assert Image.open(io.BytesIO(ppm)).format == "PPM"
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"
    for data in (ppm, eps):
        with pytest.raises(SampleError, match="cannot identify image file"):
            decode_image(data, spec())


# ---------------------------------------------------------------- API details


def test_sample_error_keeps_reason_and_message_and_pickles() -> None:
    error = SampleError("shape", "pixels: bad")
    assert (error.reason, error.message) == ("shape", "pixels: bad")
    assert str(error) == "shape: pixels: bad"
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.reason, copy.message) == ("shape", "pixels: bad")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"channels": 2},
        {"height": 0},
        {"mean": (0.5,)},
        {"std": (1.0, 0.0, 1.0)},
        {"mean": (0.0, float("nan"), 0.0)},
        {"resize": "crop"},
        {"max_image_pixels": 0},
    ],
)
def test_inconsistent_input_spec_raises_value_error(kwargs: dict[str, Any]) -> None:
    base: dict[str, Any] = {
        "channels": 3,
        "height": 8,
        "width": 8,
        "mean": (0.0, 0.0, 0.0),
        "std": (1.0, 1.0, 1.0),
        "resize": "resize",
    }
    with pytest.raises(ValueError):
        InputSpec(**{**base, **kwargs})
