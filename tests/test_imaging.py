"""Acceptance tests for nst_daemon.imaging: every bad input is a typed refusal, every mode a correct RGB."""

from __future__ import annotations

import io
import resource
import warnings
from pathlib import Path

import image_corpus as corpus
import numpy as np
import pytest
from PIL import Image, ImageCms, ImageFile, features

from nst_daemon import imaging
from nst_daemon.errors import NstdError
from nst_daemon.imaging import (
    FileTooLarge,
    ImageError,
    ImageTooLarge,
    NotAnImage,
    UnknownOutputFormat,
    UnsupportedImage,
    crop_to,
    encode_image,
    fit_within,
    format_for_path,
    load_image,
    load_image_file,
    load_job_image,
    reflect_pad_to_multiple,
    scale_to_area,
)

MB = 1024 * 1024


def pixel(image: Image.Image, x: int, y: int) -> tuple[int, ...]:
    return tuple(np.asarray(image)[y, x].tolist())


def assert_close(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 6) -> None:
    assert len(actual) == len(expected)
    assert all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True)), (actual, expected)


def assert_clean_rgb(image: Image.Image) -> None:
    assert image.mode == "RGB"
    assert image.info == {}
    np.asarray(image)  # loaded and not tied to a closed file


# --- refusals -------------------------------------------------------------------------------------------

EXPECTED_REFUSALS: dict[str, type[ImageError]] = {
    "empty": NotAnImage,
    "text named .jpg": NotAnImage,
    "html": NotAnImage,
    "one byte": NotAnImage,
    "jpeg magic only": UnsupportedImage,
    "truncated jpeg": UnsupportedImage,
    "jpeg header only": UnsupportedImage,
    "png signature only": UnsupportedImage,
    "truncated png": UnsupportedImage,
    "png bad crc": UnsupportedImage,
    "png zero size": UnsupportedImage,
    "png bomb header": ImageTooLarge,
    "gif screen bomb": ImageTooLarge,
    "truncated gif": UnsupportedImage,
    "truncated webp": UnsupportedImage,
    "truncated tiff": UnsupportedImage,
    "truncated bmp": UnsupportedImage,
    "random bytes": NotAnImage,
    "psd magic": UnsupportedImage,
    "eps": NotAnImage,
    "heic ftyp garbage": UnsupportedImage,
}
BAD_INPUTS = corpus.bad_inputs()


def test_every_corpus_entry_has_an_expectation() -> None:
    assert set(BAD_INPUTS) == set(EXPECTED_REFUSALS)


# The full decode; the queue's intake check; and the engines' decode at the scale their resize needs (a
# 1-pixel result lets every JPEG decode at an eighth). The last two must refuse all the first one does.
DECODES = {"full": {}, "intake": {"scale_down": 8}, "final size": {"final_size": imaging.fit_rule(1)}}


@pytest.mark.filterwarnings("ignore:Truncated File Read")
@pytest.mark.parametrize("decode", sorted(DECODES))
@pytest.mark.parametrize("name", sorted(EXPECTED_REFUSALS))
def test_bad_input_is_a_typed_refusal(name: str, decode: str) -> None:
    with pytest.raises(ImageError) as caught:
        load_image(BAD_INPUTS[name], **DECODES[decode])
    assert type(caught.value) is EXPECTED_REFUSALS[name], str(caught.value)
    message = str(caught.value)
    assert message and len(message) < 120 and "\n" not in message
    assert "PIL" not in message and "Traceback" not in message


def test_refusal_messages() -> None:
    with pytest.raises(NotAnImage, match=r"^this file is empty$"):
        load_image(b"")
    with pytest.raises(NotAnImage, match=r"^this file is not an image$"):
        load_image(BAD_INPUTS["text named .jpg"])
    with pytest.raises(UnsupportedImage, match=r"^this image is damaged or incomplete$"):
        load_image(corpus.truncated_jpeg())
    with pytest.raises(UnsupportedImage, match="Photoshop"):
        load_image(BAD_INPUTS["psd magic"])


def test_errors_are_user_errors_and_can_name_the_image_of_a_job() -> None:
    # load_job_image re-raises `type(exc)(exc.reason, image_index=index)`: every subclass must take that.
    for cls in (ImageError, NotAnImage, UnsupportedImage, ImageTooLarge, FileTooLarge, UnknownOutputFormat):
        assert issubclass(cls, NstdError)
        assert str(cls()) == cls.default_message
        assert (cls().reason, cls().image_index) == (cls.default_message, None)
        named = cls(cls.default_message, image_index=2)
        assert (str(named), named.reason, named.image_index) == (
            f"style image 2: {cls.default_message}",
            cls.default_message,
            2,
        )
    assert issubclass(UnknownOutputFormat, ValueError)


def test_a_job_image_error_says_which_image_without_parsing_the_message() -> None:
    with pytest.raises(UnsupportedImage) as caught:
        load_job_image(corpus.truncated_jpeg(), 0)
    assert str(caught.value) == "the content image: this image is damaged or incomplete"
    assert (caught.value.image_index, caught.value.reason) == (0, "this image is damaged or incomplete")
    with pytest.raises(NotAnImage) as caught:
        load_job_image(BAD_INPUTS["text named .jpg"], 3)
    assert str(caught.value) == "style image 3: this file is not an image"
    assert caught.value.image_index == 3


def test_header_bomb_is_refused_without_allocating() -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ImageTooLarge, match="megapixels; the limit is 40 megapixels"):
        load_image(corpus.png_header_only(30000, 30000))  # 2.7 GB of RGB if it were decoded
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 100 * 1024


def test_pixel_cap_is_checked_before_decoding() -> None:
    # Under Pillow's own limit, so our check fires; a decode would fail differently (there is no IDAT).
    with pytest.raises(
        ImageTooLarge, match=r"^image is 10000×5000; the limit is 40 megapixels \(images\.max_pixels\)$"
    ):
        load_image(corpus.png_header_only(10000, 5000))
    with pytest.raises(
        ImageTooLarge, match=r"^image is 64×48; the limit is 0\.003 megapixels \(images\.max_pixels\)$"
    ):
        load_image(corpus.jpeg((64, 48)), max_pixels=3000)
    assert load_image(corpus.jpeg((64, 48)), max_pixels=64 * 48).size == (64, 48)


def test_pillow_bomb_warning_as_error_maps_to_too_large() -> None:
    # 100 Mpx lies between Pillow's warning (89 Mpx) and error (179 Mpx) thresholds.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(
            ImageTooLarge,
            match=r"^image is 100 megapixels; the limit is 200 megapixels \(images\.max_pixels\)$",
        ):
            load_image(corpus.png_header_only(10000, 10000), max_pixels=200_000_000)


def test_byte_cap() -> None:
    with pytest.raises(FileTooLarge, match=r"^file is 60\.0 MB; the limit is 50 MB$"):
        load_image(b"\xff\xd8\xff" + bytes(60 * MB))
    with pytest.raises(FileTooLarge):
        load_image(corpus.jpeg(), max_bytes=100)
    data = corpus.jpeg()
    assert load_image(data, max_bytes=len(data)).size == (64, 48)


def test_file_byte_cap_is_checked_before_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "huge.jpg"
    with path.open("wb") as file:
        file.truncate(60 * MB)  # sparse: costs no disk

    def no_reading(*args: object, **kwargs: object) -> None:
        raise AssertionError("the file was opened")

    monkeypatch.setattr(Path, "open", no_reading)
    with pytest.raises(FileTooLarge, match=r"huge\.jpg: file is 60\.0 MB; the limit is 50 MB$"):
        load_image_file(path)


def test_load_image_file(tmp_path: Path) -> None:
    good = tmp_path / "photo.jpg"
    good.write_bytes(corpus.jpeg((40, 30)))
    assert_clean_rgb(image := load_image_file(good))
    assert image.size == (40, 30)

    with pytest.raises(ImageError, match=r"missing\.jpg: no such file$"):
        load_image_file(tmp_path / "missing.jpg")
    with pytest.raises(ImageError, match="not a regular file"):
        load_image_file(tmp_path)
    text = tmp_path / "notes.jpg"
    text.write_text("not really a photo")
    with pytest.raises(NotAnImage, match=r"notes\.jpg: this file is not an image$"):
        load_image_file(text)


# --- formats ----------------------------------------------------------------------------------------------

COLOR = (200, 100, 50)


@pytest.mark.parametrize(
    ("fmt", "params", "tolerance"),
    [
        ("PNG", {}, 0),
        ("JPEG", {"quality": 95}, 4),
        ("WEBP", {"lossless": True}, 0),
        ("BMP", {}, 0),
        ("TIFF", {}, 0),
        ("TIFF", {"compression": "tiff_lzw"}, 0),
        ("GIF", {}, 8),
    ],
)
def test_formats_round_trip(fmt: str, params: dict[str, object], tolerance: int) -> None:
    image = load_image(corpus.encode(corpus.solid((30, 20), COLOR), fmt, **params))
    assert_clean_rgb(image)
    assert image.size == (30, 20)
    assert_close(pixel(image, 15, 10), COLOR, tolerance)


def test_mpo_gives_the_primary_image() -> None:
    first, second = corpus.solid((30, 20), corpus.RED), corpus.solid((30, 20), corpus.BLUE)
    image = load_image(corpus.encode(first, "MPO", save_all=True, append_images=[second]))
    assert_close(pixel(image, 5, 5), corpus.RED)


@pytest.mark.skipif(not features.check("avif"), reason="this Pillow has no AVIF codec")
def test_avif_round_trip() -> None:
    image = load_image(corpus.encode(corpus.solid((32, 32), COLOR), "AVIF", quality=95))
    assert image.size == (32, 32)
    assert_close(pixel(image, 16, 16), COLOR, 10)


def heic_bytes(**params: object) -> bytes:
    pillow_heif = pytest.importorskip("pillow_heif")
    if not pillow_heif.libheif_info().get("encoders"):
        pytest.skip("libheif has no HEVC encoder here")
    pillow_heif.register_heif_opener()
    try:
        return corpus.encode(corpus.marked((64, 32)), "HEIF", quality=95, **params)
    except Exception as exc:
        pytest.skip(f"HEIF encoding failed: {exc}")


def test_heic_round_trip() -> None:
    image = load_image(heic_bytes())
    assert_clean_rgb(image)
    assert image.size == (64, 32)
    assert_close(pixel(image, 3, 3), corpus.RED, 30)
    assert_close(pixel(image, 50, 20), corpus.BLUE, 30)


def test_heic_orientation_is_applied_once() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    image = load_image(heic_bytes(exif=exif.tobytes()))
    assert image.size == (32, 64)
    assert_close(pixel(image, 28, 3), corpus.RED, 30)  # top-left went to top-right, once
    assert_close(pixel(image, 3, 3), corpus.BLUE, 30)


def test_heic_without_pillow_heif_is_a_clear_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    data = heic_bytes()
    monkeypatch.setattr(imaging, "_heif_state", False)
    monkeypatch.setattr(
        imaging, "_ALLOWED_FORMATS", tuple(f for f in imaging._ALLOWED_FORMATS if f != "HEIF")
    )
    with pytest.raises(UnsupportedImage, match="pillow-heif is not installed"):
        load_image(data)


def test_animated_gif_gives_first_frame() -> None:
    image = load_image(corpus.animated_gif())
    assert_clean_rgb(image)
    assert image.size == (20, 10)
    assert pixel(image, 10, 5) == corpus.RED


# --- orientation -------------------------------------------------------------------------------------------

# Where the red top-left corner of a 60×30 image ends up, and whether the sides swap.
ORIENTATIONS = {
    1: ("top-left", False),
    2: ("top-right", False),
    3: ("bottom-right", False),
    4: ("bottom-left", False),
    5: ("top-left", True),
    6: ("top-right", True),
    7: ("bottom-right", True),
    8: ("bottom-left", True),
}


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_exif_orientation(orientation: int) -> None:
    corner, swapped = ORIENTATIONS[orientation]
    image = load_image(corpus.exif_rotated_jpeg(orientation, (60, 30)))
    width, height = image.size
    assert (width, height) == ((30, 60) if swapped else (60, 30))
    corners = {
        "top-left": (4, 4),
        "top-right": (width - 5, 4),
        "bottom-left": (4, height - 5),
        "bottom-right": (width - 5, height - 5),
    }
    for name, (x, y) in corners.items():
        assert_close(pixel(image, x, y), corpus.RED if name == corner else corpus.BLUE, 12)


def test_scaled_down_decode_is_smaller_and_still_oriented() -> None:
    image = load_image(corpus.exif_rotated_jpeg(6, (480, 240)), scale_down=8)
    assert image.size == (30, 60)  # 1/8 of 240×480 after the rotation
    assert_clean_rgb(image)
    # Formats without DCT scaling decode in full.
    assert load_image(corpus.encode(corpus.solid((48, 32)), "PNG"), scale_down=8).size == (48, 32)


def psnr(first: Image.Image, second: Image.Image) -> float:
    difference = np.asarray(first, dtype=np.float64) - np.asarray(second, dtype=np.float64)
    return float(10 * np.log10(255**2 / np.mean(difference**2)))


def test_a_large_jpeg_decodes_no_larger_than_its_resize_needs() -> None:
    data = corpus.noisy_photo((2400, 1600))
    full = load_image(data)
    # Fitting within 256 needs 4 × 256 = 1024 pixels across (DECODE_GAP): half the size keeps that.
    reduced = load_image(data, final_size=imaging.fit_rule(256))
    assert (full.size, reduced.size) == ((2400, 1600), (1200, 800))
    assert_clean_rgb(reduced)
    fitted, fitted_from_full = fit_within(reduced, 256), fit_within(full, 256)
    assert fitted.size == fitted_from_full.size == imaging.fitted_size(full.size, 256) == (256, 171)
    assert psnr(fitted, fitted_from_full) > 45  # the same picture: JPEG quality 92 is about 40 dB
    # Within twice the gap nothing is saved, and other formats have no reduced decode.
    assert load_image(data, final_size=imaging.fit_rule(400)).size == (2400, 1600)
    png = corpus.encode(Image.open(io.BytesIO(data)), "PNG", compress_level=0)
    assert load_image(png, final_size=imaging.fit_rule(256)).size == (2400, 1600)


@pytest.mark.parametrize(("size", "side"), [((2400, 1600), 256), ((3000, 2000), 480)])
def test_a_reduced_decode_does_not_alias(size: tuple[int, int], side: int) -> None:
    # Against a plain Lanczos from the full decode. With a gap of 3 the second case decodes at half size
    # and measures 36 dB; the full decode with nstd's own resize measures 45.
    data = corpus.zone_plate_jpeg(size)
    full = load_image(data)
    plain = full.resize(imaging.fitted_size(full.size, side), Image.Resampling.LANCZOS)
    assert psnr(fit_within(load_image(data, final_size=imaging.fit_rule(side)), side), plain) > 45


def test_a_reduced_decode_is_still_oriented() -> None:
    # Stored 1440 × 720, shown 720 × 1440: the rule gets the stored size, and either way round agrees.
    data = corpus.exif_rotated_jpeg(6, (1440, 720), block=160)
    image = load_image(data, final_size=imaging.fit_rule(60))  # 4 × (60, 30) fits a quarter, 360 × 180
    assert image.size == (180, 360)
    assert_close(pixel(image, 175, 4), corpus.RED, 12)  # the red top-left corner went to the top-right
    assert_close(pixel(image, 4, 4), corpus.BLUE, 12)


def test_a_style_scaled_to_an_area_decodes_reduced() -> None:
    data = corpus.noisy_photo((2000, 2000))
    rule = imaging.same_area_rule((256, 171))  # NST scales a style to the fitted content's area
    assert rule((2000, 2000)) == scale_to_area(Image.new("RGB", (2000, 2000)), 256 * 171).size == (209, 209)
    assert load_image(data, final_size=rule).size == (1000, 1000)
    # A style smaller than the content's area is scaled up: it decodes in full.
    assert load_image(corpus.noisy_photo((160, 160)), final_size=rule).size == (160, 160)


@pytest.mark.filterwarnings("ignore:Truncated File Read")
def test_scaled_down_decode_refuses_a_cut_progressive_jpeg() -> None:
    pixels = np.random.default_rng(3).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    data = corpus.encode(Image.fromarray(pixels, "RGB"), "JPEG", quality=90, progressive=True)
    assert load_image(data, scale_down=8).size == (80, 60)
    with pytest.raises(UnsupportedImage):
        load_image(data[: len(data) * 3 // 4], scale_down=8)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_broken_exif_does_not_cost_the_photo() -> None:
    data = corpus.encode(corpus.solid((16, 8)), "JPEG", exif=b"Exif\x00\x00MM\x00*\x00\x00\xff\xff")
    assert load_image(data).size == (16, 8)


# --- modes ------------------------------------------------------------------------------------------------


def test_cmyk_jpeg_cyan() -> None:
    image = load_image(corpus.cmyk_jpeg((255, 0, 0, 0)))
    assert_clean_rgb(image)
    assert_close(pixel(image, 8, 8), (0, 255, 255))


def test_cmyk_with_a_broken_profile_falls_back() -> None:
    data = corpus.encode(Image.new("CMYK", (16, 16), (255, 0, 0, 0)), "JPEG", icc_profile=b"not a profile")
    assert_close(pixel(load_image(data), 8, 8), (0, 255, 255))


@pytest.mark.parametrize(
    "mode, color, icc, expected",
    [
        ("CMYK", (255, 0, 0, 0), None, (0, 255, 255)),
        ("L", 128, None, (128, 128, 128)),
        ("RGB", (128, 128, 128), "linear", (188, 188, 188)),
    ],
)
def test_scaled_down_decode_keeps_modes_and_profiles(
    mode: str, color: object, icc: str | None, expected: tuple[int, int, int]
) -> None:
    # The intake check takes the same colour path as the full decode, on an eighth of the pixels.
    options = {"icc_profile": corpus.linear_rgb_profile()} if icc else {}
    data = corpus.encode(Image.new(mode, (64, 48), color), "JPEG", quality=95, **options)
    full, small = load_image(data), load_image(data, scale_down=8)
    assert small.size == (8, 6)
    assert_clean_rgb(small)
    assert_close(pixel(small, 4, 3), pixel(full, 32, 24), 2)
    assert_close(pixel(small, 4, 3), expected, 8)


def test_16_bit_png_is_scaled_not_clipped() -> None:
    image = load_image(corpus.png16([0, 32768, 65535, 1000]))
    assert [pixel(image, x, 0)[0] for x in range(4)] == [0, 128, 255, 4]
    assert pixel(image, 2, 0) == (255, 255, 255)


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I"])
def test_16_bit_modes(mode: str) -> None:
    image = Image.new(mode, (3, 1))
    for x, value in enumerate((0, 32768, 65535)):
        image.putpixel((x, 0), value)
    rgb = imaging._to_srgb(image)
    assert [pixel(rgb, x, 0) for x in range(3)] == [(0, 0, 0), (128, 128, 128), (255, 255, 255)]


def test_float_tiff() -> None:
    unit = load_image(corpus.tiff_float([0.0, 0.5, 1.0]))
    assert [pixel(unit, x, 0)[0] for x in range(3)] == [0, 128, 255]
    hdr = load_image(corpus.tiff_float([0.0, 2.0, 4.0, float("nan")]))
    assert [pixel(hdr, x, 0)[0] for x in range(4)] == [0, 128, 255, 0]


def test_rgba_composites_onto_white() -> None:
    image = load_image(corpus.rgba_png([(255, 0, 0, 0), (255, 0, 0, 255), (255, 0, 0, 128), (0, 0, 0, 0)]))
    assert_clean_rgb(image)
    assert pixel(image, 0, 0) == (255, 255, 255)
    assert pixel(image, 1, 0) == (255, 0, 0)
    assert_close(pixel(image, 2, 0), (255, 127, 127), 2)
    assert pixel(image, 3, 0) == (255, 255, 255)


@pytest.mark.parametrize("data", [corpus.palette_png_transparent(), corpus.palette_gif_transparent()])
def test_palette_transparency_becomes_white(data: bytes) -> None:
    image = load_image(data)
    assert pixel(image, 1, 1) == (255, 255, 255)
    assert pixel(image, 6, 1) == corpus.BLUE


def test_palette_partial_alpha() -> None:
    data = corpus.encode(corpus.palette_image(), "PNG", transparency=bytes([128, 255]))
    image = load_image(data)
    assert_close(pixel(image, 1, 1), (255, 127, 127), 2)
    assert pixel(image, 6, 1) == corpus.BLUE


def test_grey_transparency_key() -> None:
    grey = Image.new("L", (2, 1), 0)
    grey.putpixel((1, 0), 90)
    image = load_image(corpus.encode(grey, "PNG", transparency=0))
    assert pixel(image, 0, 0) == (255, 255, 255)
    assert pixel(image, 1, 0) == (90, 90, 90)


@pytest.mark.parametrize(
    ("mode", "value", "expected"),
    [
        ("1", 1, (255, 255, 255)),
        ("L", 77, (77, 77, 77)),
        ("LA", (77, 0), (255, 255, 255)),
        ("LA", (77, 255), (77, 77, 77)),
        ("La", (0, 0), (255, 255, 255)),
        ("PA", (0, 0), (255, 255, 255)),
        ("RGBa", (0, 0, 0, 0), (255, 255, 255)),
        ("RGBX", (10, 20, 30, 0), (10, 20, 30)),
        ("YCbCr", (76, 85, 255), (254, 0, 0)),
        ("HSV", (0, 255, 255), (255, 0, 0)),
        ("F", 0.25, (64, 64, 64)),
    ],
)
def test_modes_to_rgb(mode: str, value: object, expected: tuple[int, int, int]) -> None:
    rgb = imaging._to_srgb(Image.new(mode, (2, 2), value))
    assert rgb.mode == "RGB"
    assert_close(pixel(rgb, 1, 1), expected, 2)


def test_lab_to_srgb() -> None:
    # L*=100, a*=b*=0 is white; Pillow stores a*/b* offset by 128.
    assert_close(pixel(imaging._to_srgb(Image.new("LAB", (1, 1), (255, 128, 128))), 0, 0), (255, 255, 255), 3)


# --- colour management -------------------------------------------------------------------------------------


def test_embedded_profile_is_converted_to_srgb() -> None:
    icc = corpus.linear_rgb_profile()
    assert ImageCms.ImageCmsProfile(io.BytesIO(icc)).profile.profile_description == "linear RGB (test)"
    grey = load_image(corpus.png_with_profile((128, 128, 128), icc))
    assert_close(pixel(grey, 2, 2), (188, 188, 188), 3)  # linear 0.5 is sRGB 0.735
    red = load_image(corpus.png_with_profile((255, 0, 0), icc))
    assert_close(pixel(red, 2, 2), (255, 0, 0), 3)
    assert red.info == {}  # the profile no longer describes the pixels


def test_srgb_and_broken_profiles_leave_pixels_alone() -> None:
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    for icc in (srgb, b"garbage", corpus.linear_rgb_profile()[:100]):
        assert pixel(load_image(corpus.png_with_profile((128, 64, 32), icc)), 0, 0) == (128, 64, 32)


def test_profile_of_the_wrong_colour_space_is_ignored() -> None:
    data = corpus.encode(Image.new("L", (4, 4), 128), "PNG", icc_profile=corpus.linear_rgb_profile())
    assert pixel(load_image(data), 0, 0) == (128, 128, 128)


# --- geometry ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "max_side", "expected"),
    [
        ((400, 100), 200, (200, 50)),
        ((100, 400), 200, (50, 200)),
        ((333, 250), 100, (100, 75)),
        ((5000, 1), 100, (100, 1)),
        ((1, 5000), 100, (1, 100)),
        ((300, 300), 299, (299, 299)),
    ],
)
def test_fit_within_downscales_keeping_aspect(
    size: tuple[int, int], max_side: int, expected: tuple[int, int]
) -> None:
    result = fit_within(Image.new("RGB", size), max_side)
    assert result.size == expected


def test_fit_within_never_upscales() -> None:
    image = Image.new("RGB", (120, 80))
    assert fit_within(image, 120) is image
    assert fit_within(image, 4096) is image
    with pytest.raises(ValueError):
        fit_within(image, 0)


def test_scale_to_area() -> None:
    down = scale_to_area(Image.new("RGB", (200, 100)), 5000)
    assert down.size == (100, 50)
    up = scale_to_area(Image.new("RGB", (10, 10)), 10_000)
    assert up.size == (100, 100)
    odd = scale_to_area(Image.new("RGB", (640, 480)), 1_000_000)
    assert abs(odd.width * odd.height - 1_000_000) < 2_000
    assert abs(odd.width / odd.height - 640 / 480) < 0.01
    assert scale_to_area(Image.new("RGB", (1, 10_000)), 100).size == (1, 100)
    assert scale_to_area(Image.new("RGB", (10_000, 1)), 100).size == (100, 1)
    same = Image.new("RGB", (50, 20))
    assert scale_to_area(same, 1000) is same
    with pytest.raises(ValueError):
        scale_to_area(same, 0)


@pytest.mark.parametrize(
    "shape", [(250, 333, 3), (1, 1, 3), (2, 3, 3), (3, 2, 3), (4, 4, 3), (5, 7), (7, 5, 1), (13, 2, 3)]
)
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_reflect_pad_round_trip(shape: tuple[int, ...], dtype: type) -> None:
    array = np.random.default_rng(0).integers(0, 256, shape).astype(dtype)
    padded, size = reflect_pad_to_multiple(array, 4)
    assert size == shape[:2]
    assert padded.dtype == array.dtype
    assert padded.shape[0] % 4 == 0 and padded.shape[1] % 4 == 0
    assert padded.shape[0] - shape[0] < 4 and padded.shape[1] - shape[1] < 4
    assert padded.shape[2:] == array.shape[2:]
    np.testing.assert_array_equal(crop_to(padded, size), array)


def test_reflect_pad_values() -> None:
    array = np.arange(250 * 333 * 3).reshape(250, 333, 3)
    padded, _ = reflect_pad_to_multiple(array)
    assert padded.shape == (252, 336, 3)
    np.testing.assert_array_equal(padded[250], padded[248])  # reflect: mirrors without repeating the edge
    np.testing.assert_array_equal(padded[:250, 333], array[:, 331])

    tiny = np.full((1, 1, 3), 7)
    assert (reflect_pad_to_multiple(tiny)[0] == 7).all()  # too small to reflect: edge

    small = np.arange(6).reshape(2, 3)
    padded, _ = reflect_pad_to_multiple(small)
    np.testing.assert_array_equal(padded[2:, :3], [small[1], small[1]])  # 2 rows cannot reflect 2: edge
    np.testing.assert_array_equal(padded[:2, 3], small[:, 1])  # 3 columns reflect 1
    assert reflect_pad_to_multiple(np.zeros((4, 8, 3)))[0].shape == (4, 8, 3)
    assert reflect_pad_to_multiple(np.zeros((9, 9, 3)), 8)[0].shape == (16, 16, 3)
    with pytest.raises(ValueError):
        crop_to(np.zeros((4, 4)), (5, 4))


# --- encoding ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "magic"), [("jpeg", b"\xff\xd8\xff"), ("png", b"\x89PNG")])
def test_encode_round_trip(fmt: str, magic: bytes) -> None:
    source = corpus.marked((61, 37))
    data = encode_image(source, fmt)
    assert data.startswith(magic)
    decoded = load_image(data)
    assert decoded.size == (61, 37)
    assert_close(pixel(decoded, 2, 2), corpus.RED, 0 if fmt == "png" else 8)
    assert_close(pixel(decoded, 50, 30), corpus.BLUE, 0 if fmt == "png" else 8)


def test_encode_writes_no_metadata_and_flattens_alpha() -> None:
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    image.info["icc_profile"] = corpus.linear_rgb_profile()
    for fmt in ("jpeg", "png"):
        decoded = Image.open(io.BytesIO(encode_image(image, fmt)))
        assert "icc_profile" not in decoded.info
        assert decoded.mode == "RGB"
        assert_close(pixel(decoded.convert("RGB"), 1, 1), (255, 255, 255), 2)
    with pytest.raises(UnknownOutputFormat):
        encode_image(image, "gif")


def test_format_for_path() -> None:
    assert format_for_path(Path("out.jpg")) == "jpeg"
    assert format_for_path(Path("OUT.JPEG")) == "jpeg"
    assert format_for_path(Path("a/b.png")) == "png"
    for name in ("out.gif", "out.webp", "out"):
        with pytest.raises(UnknownOutputFormat, match=name):
            format_for_path(Path(name))
    with pytest.raises(ValueError):
        format_for_path(Path("x.bmp"))


# --- the intake check (header only) -----------------------------------------------------------------------


def test_check_image_reads_the_header_and_decodes_no_pixels_of_other_formats(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loads: list[str | None] = []
    real_load = ImageFile.ImageFile.load

    def spy(self: ImageFile.ImageFile) -> object:
        loads.append(self.format)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    info = imaging.check_image(corpus.large_png(8000, 5000))  # 120 MB of RGB if it were decoded
    assert (info.format, info.size, info.mode) == ("PNG", (8000, 5000), "RGB")
    assert (info.extension, info.content_type) == ("png", "image/png")
    webp = imaging.check_image(corpus.encode(corpus.solid((64, 48)), "WEBP"))
    assert (webp.format, webp.extension, webp.content_type) == ("WEBP", "webp", "image/webp")
    assert loads == []
    # A JPEG is decoded, at an eighth of each side: damage shows, at 1/64 of the memory.
    jpeg = imaging.check_image(corpus.jpeg((640, 480)))
    assert (jpeg.extension, jpeg.size, loads) == ("jpg", (640, 480), ["JPEG"])


def test_check_image_refuses_the_corpus_that_a_header_or_a_jpeg_scan_can_tell() -> None:
    # Only decoding finds a cut-off PNG or BMP: the engine process refuses those (test_jobs_intake.py).
    decode_only = {"truncated png", "truncated bmp"}
    for name, data in corpus.bad_inputs().items():
        if name in decode_only:
            assert imaging.check_image(data).size == (32, 24), name
            with pytest.raises(UnsupportedImage):
                load_image(data)
            continue
        with pytest.raises(ImageError):
            imaging.check_image(data)


def test_check_image_refuses_slivers_with_the_reason() -> None:
    with pytest.raises(ImageError, match=r"^image is 1×50000; each side needs at least 16 px$"):
        imaging.check_image(corpus.png_header_only(1, 50000))
    with pytest.raises(
        ImageError, match=r"^image is 340×20, 17 times as long as it is wide; the limit is 16:1$"
    ):
        imaging.check_image(corpus.large_png(340, 20))
    assert imaging.check_image(corpus.large_png(16, 256)).size == (16, 256)  # the widest shape NST takes
    with pytest.raises(ImageError, match=r"^style image 2: image is 8×8; each side needs at least 16 px$"):
        imaging.check_job_image(corpus.large_png(8, 8), 2)


def test_check_image_names_the_pixel_setting() -> None:
    with pytest.raises(
        ImageTooLarge, match=r"^image is 8000×6000; the limit is 40 megapixels \(images\.max_pixels\)$"
    ):
        imaging.check_image(corpus.png_header_only(8000, 6000))
