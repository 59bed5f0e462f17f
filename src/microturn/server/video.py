"""Camera frames from clients (`microturn.video.frame`): checked, decoded, centre-cropped to a square and
reduced to the model's frame size before they reach the session.

`open_frame` reads only the header (base64, byte size, format, pixel count: cheap, on the event loop);
`decode_frame` decodes. Frames up to `INLINE_PIXELS` (a page's 160 x 160 JPEG takes well under a
millisecond) are decoded on the event loop; larger ones in a worker thread (realtime.py), so a client
sending 4K photos cannot stall the other connections. JPEGs are decoded at a reduced DCT scale when they
are much larger than the model's frames (`Image.draft`), which makes even large frames cheap.
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

FORMATS = ("JPEG", "PNG", "WEBP")
INLINE_PIXELS = 640 * 480  # decoded on the event loop up to this many pixels; larger frames in a thread


class FrameError(ValueError):
    """A frame that cannot be used; becomes an `invalid_image` error event."""


@dataclass
class VideoStats:
    """What a connection received (reported as `microturn.video.received`)."""

    frames: int = 0  # decoded and passed to the session
    refused: int = 0  # not decodable, too large, ...: each answered with an `error` event
    dropped: int = 0  # valid, but a newer frame was there before it was decoded (large frames only)
    width: int = 0  # the last accepted frame as the client sent it
    height: int = 0
    reported_at: float = float("-inf")  # monotonic time of the last report


def _base64(text: str) -> bytes:
    if text.startswith("data:"):  # a data URL, as canvas.toDataURL gives it
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):  # ValueError: non-ASCII text
        raise FrameError("image is not valid base64") from None


def open_frame(image: str, max_bytes: int, max_pixels: int) -> Image.Image:
    """The frame's header read and checked (nothing decoded yet): an open PIL image."""
    raw = _base64(image)
    if not raw:
        raise FrameError("image is empty")
    if len(raw) > max_bytes:
        raise FrameError(f"frame of {len(raw)} bytes exceeds the limit of {max_bytes} bytes")
    try:
        frame = Image.open(io.BytesIO(raw), formats=FORMATS)
    except Exception as exc:  # UnidentifiedImageError, DecompressionBombError, a plugin's own errors
        raise FrameError(f"image is not a readable JPEG, PNG or WebP ({type(exc).__name__})") from None
    if frame.width < 1 or frame.height < 1 or frame.width * frame.height > max_pixels:
        frame.close()
        raise FrameError(f"frame of {frame.width}x{frame.height} pixels is too large (limit {max_pixels})")
    return frame


def decode_frame(frame: Image.Image, size: int) -> np.ndarray:
    """Decode an opened frame, centre-crop it to a square, resize it: RGB uint8 [size, size, 3]."""
    try:
        with frame:
            if frame.format == "JPEG":
                frame.draft("RGB", (size, size))  # decode at 1/2, 1/4 or 1/8 scale when still >= size
            frame.load()
            rgb = frame.convert("RGB")
    except Exception as exc:  # truncated or corrupt data (OSError, SyntaxError, ...)
        raise FrameError(f"image could not be decoded ({type(exc).__name__}: {exc})"[:300]) from None
    w, h = rgb.size
    side = min(w, h)
    if w != h:
        left, top = (w - side) // 2, (h - side) // 2
        rgb = rgb.crop((left, top, left + side, top + side))
    if side != size:
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)  # antialiased when reducing
    return np.array(rgb)  # a writable copy: the engine makes a tensor of it
