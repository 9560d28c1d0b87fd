"""Why an image cannot be used: one class per kind of refusal, each with its message for the user."""

from __future__ import annotations

from nst_daemon.errors import NstdError


class ImageError(NstdError):
    """An image that cannot be used; str() is the message for the user.

    For an image of a job, `image_index` says which (0 is the content, N is style image N) and `reason`
    is the message without the prefix naming it, so a caller can point at the image without parsing.
    """

    default_message = "this image cannot be used"

    def __init__(self, message: str | None = None, *, image_index: int | None = None) -> None:
        self.reason = message or self.default_message
        self.image_index = image_index
        super().__init__(self.reason if image_index is None else f"{_image_name(image_index)}: {self.reason}")


def _image_name(index: int) -> str:
    return "the content image" if index == 0 else f"style image {index}"


class NotAnImage(ImageError):
    default_message = "this file is not an image"


class UnsupportedImage(ImageError):
    default_message = "this image is damaged or incomplete"


class ImageTooLarge(ImageError):
    default_message = "this image has too many pixels"


class FileTooLarge(ImageError):
    default_message = "this file is too large"


class UnknownOutputFormat(ImageError, ValueError):
    default_message = "unknown output format; use .jpg, .jpeg or .png"
