"""Camera frames (`microturn.video.frame`): checked, decoded (large ones off the event loop), centre-cropped
and reduced to the model's frame size, counted and reported (`microturn.video.received`); a bad frame gets
an `error` and the session keeps what it had. Also the fake camera's Y4M writer."""

from __future__ import annotations

import base64
import io
import time

import numpy as np
import pytest
from PIL import Image
from test_server_realtime import (
    TEST_LIMITS,
    build_checkpoint,
    client,
    collect,
    live_sessions,
    of_type,
    send,
    start_server,
    steer,
)

from microturn.runtime.engine import EngineConfig
from microturn.server.app import ServerConfig
from microturn.server.cli import load_engine
from microturn.server.fakecam import camera_frame, lit_lamp, rgb_to_i420, write_y4m
from microturn.server.video import INLINE_PIXELS, FrameError, decode_frame, open_frame


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    checkpoint = build_checkpoint(tmp_path_factory.mktemp("video_ckpt"))
    engine = load_engine(checkpoint, EngineConfig(max_sessions=4))
    steer(engine)
    running = start_server(engine, ServerConfig(port=0, limits=TEST_LIMITS))
    yield engine, running.port
    running.stop()


def encoded(image: Image.Image, fmt: str = "JPEG", **options) -> str:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **options)
    return base64.b64encode(buf.getvalue()).decode()


def banded(width: int, height: int, centre=(200, 30, 30), band=(20, 200, 20)) -> Image.Image:
    """A picture whose centred square is `centre` and whose side bands are `band`."""
    rgb = np.empty((height, width, 3), np.uint8)
    rgb[:] = band
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    rgb[top : top + side, left : left + side] = centre
    return Image.fromarray(rgb)


def test_open_frame_refuses_what_it_cannot_use():
    for image, message in [
        ("%%%", "base64"),
        ("", "empty"),
        (base64.b64encode(b"not an image").decode(), "JPEG, PNG or WebP"),
        (encoded(Image.new("RGB", (8, 8)), "BMP"), "JPEG, PNG or WebP"),  # a format we do not decode
        (encoded(Image.new("RGB", (8, 8)), "GIF"), "JPEG, PNG or WebP"),
        (encoded(Image.new("RGB", (100, 100))), "too large"),  # over max_pixels below
    ]:
        with pytest.raises(FrameError, match=message):
            open_frame(image, max_bytes=1 << 20, max_pixels=50 * 50)
    with pytest.raises(FrameError, match="bytes exceeds"):
        open_frame(encoded(Image.new("RGB", (64, 64)), "PNG"), max_bytes=10, max_pixels=1 << 20)
    whole = base64.b64decode(encoded(banded(320, 240)))
    truncated = whole[: len(whole) // 2]
    frame = open_frame(base64.b64encode(truncated).decode(), 1 << 20, 1 << 20)  # the header is fine
    with pytest.raises(FrameError, match="could not be decoded"):
        decode_frame(frame, 160)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_frames_are_centre_cropped_and_reduced_to_the_model_size(fmt):
    data_url = "data:image/x;base64," + encoded(banded(640, 480), fmt)
    rgb = decode_frame(open_frame(data_url, 1 << 22, 1 << 22), 160)
    assert rgb.shape == (160, 160, 3) and rgb.dtype == np.uint8 and rgb.flags.writeable
    assert np.abs(rgb[4:-4, 4:-4].astype(int) - (200, 30, 30)).max() < 30  # the bands are cropped away
    tall = decode_frame(open_frame(encoded(banded(120, 200), "PNG"), 1 << 22, 1 << 22), 160)
    assert np.abs(tall[4:-4, 4:-4].astype(int) - (200, 30, 30)).max() < 30  # upscaled to 160


def test_a_large_jpeg_decodes_at_reduced_scale_quickly():
    image = encoded(banded(4000, 3000), quality=90)
    frame = open_frame(image, 1 << 24, 4096 * 4096)
    assert frame.width * frame.height > INLINE_PIXELS  # the server decodes this one in a thread
    start = time.perf_counter()
    rgb = decode_frame(frame, 160)
    assert time.perf_counter() - start < 0.5
    assert np.abs(rgb[4:-4, 4:-4].astype(int) - (200, 30, 30)).max() < 30


def test_frames_reach_the_session_are_counted_and_bad_ones_leave_it_intact(served):
    engine, port = served
    with client(port) as ws:
        time.sleep(0.3)  # joined at a micro-turn
        (session,) = live_sessions(engine)
        send(ws, "microturn.video.frame", event_id="f1", image=encoded(banded(320, 240)))
        report = collect(ws, of_type("microturn.video.received"))[-1]
        assert report["frames"] == 1 and report["refused"] == 0
        assert (report["width"], report["height"]) == (320, 240)
        assert session.last_video.shape == (160, 160, 3)  # centre-cropped, the model's size
        red = session.last_video.copy()
        assert np.abs(red[4:-4, 4:-4].astype(int) - (200, 30, 30)).max() < 30

        bad = {
            "v1": base64.b64encode(b"not a jpeg").decode(),
            "v2": "@@not base64@@",
            "v3": encoded(Image.new("RGB", (8, 8)), "BMP"),
            "v4": encoded(banded(320, 240))[:800],  # a truncated JPEG
        }
        for event_id, image in bad.items():
            send(ws, "microturn.video.frame", event_id=event_id, image=image)
        errors = []
        while len(errors) < len(bad):
            errors += [e for e in collect(ws, of_type("error")) if e["type"] == "error"]
        assert [e["error"]["event_id"] for e in errors] == list(bad)
        assert {e["error"]["code"] for e in errors} == {"invalid_image"}
        assert np.array_equal(session.last_video, red)  # nothing lost: the last good frame stands

        # A large frame (decoded in a thread) followed at once by a small one: the newest wins.
        send(ws, "microturn.video.frame", image=encoded(banded(1600, 1200, centre=(30, 30, 200)), "PNG"))
        send(ws, "microturn.video.frame", image=encoded(banded(160, 160, centre=(240, 240, 240))))
        time.sleep(1.1)  # the next report is due a second after the last
        send(ws, "microturn.video.frame", image=encoded(banded(160, 160, centre=(240, 240, 240))))
        report = collect(ws, of_type("microturn.video.received"))[-1]
        assert report["refused"] == 4
        assert report["frames"] + report["dropped"] == 4 and report["frames"] >= 3
        assert report["used"] >= 1  # the model took at least one frame
        assert np.abs(session.last_video[4:-4, 4:-4].astype(int) - 240).max() < 30
        assert session.video_frames == report["frames"]


# ---- the fake camera's Y4M ----


def test_y4m_holds_i420_frames_that_decode_back_to_the_picture(tmp_path):
    rng = np.random.default_rng(0)
    scene = np.zeros((160, 160, 3), np.uint8)
    scene[:80] = (235, 40, 30)
    scene[80:] = (40, 220, 70)
    frames = [camera_frame(scene, 320, 240), rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)]
    path = tmp_path / "camera.y4m"
    assert write_y4m(path, frames, 320, 240, 15) == 2
    data = path.read_bytes()
    header, _, rest = data.partition(b"\n")
    assert header == b"YUV4MPEG2 W320 H240 F15:1 Ip A1:1 C420jpeg"
    frame_bytes = 320 * 240 * 3 // 2
    assert len(rest) == 2 * (len(b"FRAME\n") + frame_bytes)
    assert rest[:6] == b"FRAME\n" and rest[6 : 6 + frame_bytes] == rgb_to_i420(frames[0])
    # Back to RGB (BT.601 limited range): the scene sits in the middle, the bands at the sides.
    y = np.frombuffer(rest[6 : 6 + 320 * 240], np.uint8).reshape(240, 320).astype(float)
    u = np.frombuffer(rest[6 + 320 * 240 : 6 + 320 * 240 * 5 // 4], np.uint8).reshape(120, 160).astype(float)
    v = np.frombuffer(rest[6 + 320 * 240 * 5 // 4 : 6 + frame_bytes], np.uint8).reshape(120, 160)
    yy, uu, vv = y[::2, ::2] - 16, u - 128, v.astype(float) - 128
    rgb = np.stack(
        [1.164 * yy + 1.596 * vv, 1.164 * yy - 0.392 * uu - 0.813 * vv, 1.164 * yy + 2.017 * uu], axis=-1
    )
    assert np.abs(rgb[20, 80] - (235, 40, 30)).max() < 8  # top half of the scene, centred
    assert np.abs(rgb[100, 80] - (40, 220, 70)).max() < 8
    assert np.abs(rgb[60, 5] - 128).max() < 4  # a side band
    with pytest.raises(ValueError, match="even"):
        rgb_to_i420(np.zeros((3, 4, 3), np.uint8))


def test_lit_lamp_reads_the_rendered_light():
    from microturn.data import video

    light = {"type": "light", "x": 60.0, "y": 30.0, "w": 24.0, "change": 2.0}
    spec = {"size": 160, "background": {"top": [90, 90, 160], "bottom": [90, 120, 160]}, "objects": [light]}
    assert lit_lamp(video.render_frame(spec, 1.0), light) == "red"
    assert lit_lamp(video.render_frame(spec, 2.5), light) == "green"
