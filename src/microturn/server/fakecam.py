"""A fake camera and microphone for the browser page: a visual-cue episode ("tell me when the light turns
green", data/proactive.py) as a Y4M video for Chromium's `--use-file-for-fake-video-capture` and the
user's voice as a wav for `--use-file-for-fake-audio-capture`.

The episode is rendered by the corpus's own renderer (`data.synth.render`, shape `visual_cue`, variant
`light`, the corpus's voices and TTS cache) from a fixed seed, with no echo of the assistant in the
user's channel (the reference answer must not leak into the microphone). Its scene (`data.video`) is
drawn at the camera's frame rate and placed, scaled up, in the middle of a wider 4:3 camera picture with
plain bands at the sides, so the page's centre crop gives back the scene the model was trained on. Both
files start at time 0 of the episode and have its length (Chromium loops both).

`python -m microturn.server.fakecam OUT_DIR` writes `camera.y4m`, `microphone.wav` and `episode.json`
(the scene, the light's change time, the instruction) and prints the Chromium flags for a manual run
(`--use-fake-ui-for-media-stream --use-fake-device-for-media-stream --use-file-for-fake-video-capture=...
--use-file-for-fake-audio-capture=...`).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from microturn.audio import SAMPLE_RATE
from microturn.data import video

DEFAULT_SEED = 7  # "let me know when the light goes green", 0.6-3.0 s; it turns green at 7.68 s; 20.9 s long
BAND_RGB = (128, 128, 128)  # the sides of the 4:3 picture, outside the page's centre crop
# What the user talks about besides the instruction (the episode's chat text): plain, unrelated sentences.
LIVE_CHAT = (
    "i was thinking we could go for a walk later if the weather stays nice this afternoon.",
    "my sister called this morning and we talked about her new job for a while.",
    "i still have to finish the report for work, it is taking much longer than i thought.",
    "we should buy some bread and fruit on the way home, the fridge is almost empty.",
)


@dataclass(frozen=True)
class LiveEpisode:
    scene: dict  # data.video scene spec (160 x 160)
    change_s: float  # when the light turns green, seconds from the start of both files
    instruction: str  # what the user asks
    reply: str  # what the corpus's assistant says at the change (the reference)
    user: np.ndarray  # the microphone: 16 kHz float32
    duration_s: float

    @property
    def light(self) -> dict:
        return next(o for o in self.scene["objects"] if o["type"] == "light")


def light_episode(seed: int = DEFAULT_SEED, tts_cache: str | Path | None = None) -> LiveEpisode:
    """The visual-cue episode "tell me when the light turns green" (variant `light`), rendered."""
    from microturn.data.chitchat import Chat, Turn
    from microturn.data.synth import ConversationSpec, SynthConfig, render
    from microturn.data.tts import TtsCache

    chat = Chat("live", tuple(Turn(i % 2, text) for i, text in enumerate(LIVE_CHAT)))
    spec = ConversationSpec(
        f"visual_cue-live-{seed}", "test", chat.key, 0, len(chat.turns), 0, "visual_cue", (), "light"
    )
    config = replace(SynthConfig.for_shape("visual_cue"), echo_p=0.0)
    conv = render(spec, {chat.key: chat}, TtsCache(tts_cache) if tts_cache else TtsCache(), seed, config)
    (change,) = [e for e in conv.events if e.type == "visual_change"]
    instruction = next(u.text for u in conv.utterances if u.speaker == "user")
    return LiveEpisode(
        scene=conv.video["spec"],
        change_s=float(change.start),
        instruction=instruction,
        reply=change.text or "",
        user=conv.user.astype(np.float32),
        duration_s=float(conv.duration_s),
    )


def lamp_colour(frame: np.ndarray, light: dict, lamp: str) -> np.ndarray:
    """Mean RGB of one lamp (`red`, `yellow`, `green`) of a light object in a scene-sized frame."""
    k = ("red", "yellow", "green").index(lamp)
    x, y, w = light["x"], light["y"], light["w"]
    cx, cy, r = x + w / 2, y + 2.6 * w * (k + 0.5) / 3, 0.36 * w * 0.6
    yy, xx = np.mgrid[0 : frame.shape[0], 0 : frame.shape[1]]
    inside = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    return frame[inside].reshape(-1, 3).astype(np.float64).mean(axis=0)


def lit_lamp(frame: np.ndarray, light: dict) -> str | None:
    """Which lamp of the light is lit in `frame` (a scene-sized RGB frame): `red`, `green` or None."""
    red, green = lamp_colour(frame, light, "red"), lamp_colour(frame, light, "green")
    if green[1] > 140 and green[1] > green[0] + 60:
        return "green"
    if red[0] > 150 and red[0] > red[1] + 60:
        return "red"
    return None


# --- Y4M ----------------------------------------------------------------------------------------------------
def rgb_to_i420(rgb: np.ndarray) -> bytes:
    """RGB uint8 [H, W, 3] (H, W even) -> planar Y, U, V (4:2:0, BT.601 limited range), as Y4M stores it."""
    h, w, _ = rgb.shape
    if h % 2 or w % 2:
        raise ValueError(f"4:2:0 needs an even width and height, got {w}x{h}")
    f = rgb.astype(np.float32)
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    y = 16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0
    u = 128.0 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255.0
    v = 128.0 + (112.0 * r - 93.786 * g - 18.214 * b) / 255.0

    def half(c: np.ndarray) -> np.ndarray:  # 2x2 means: chroma sited between the samples (C420jpeg)
        return c.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))

    planes = (y, half(u), half(v))
    return b"".join(np.clip(np.round(p), 0, 255).astype(np.uint8).tobytes() for p in planes)


def write_y4m(path: str | Path, frames: Iterable[np.ndarray], width: int, height: int, fps: int) -> int:
    """Write RGB frames as a YUV4MPEG2 file (4:2:0); returns the number of frames."""
    n = 0
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for frame in frames:
            if frame.shape != (height, width, 3):
                raise ValueError(f"frame {n} is {frame.shape}, not {(height, width, 3)}")
            f.write(b"FRAME\n")
            f.write(rgb_to_i420(frame))
            n += 1
    return n


def camera_frame(scene_frame: np.ndarray, width: int, height: int) -> np.ndarray:
    """The square scene frame scaled to the picture's height, in the middle of a `width` x `height`
    picture (bands of BAND_RGB at the sides): the page's centre crop is the scene again."""
    from PIL import Image

    if width < height:
        raise ValueError("the camera picture must be at least as wide as it is high")
    side = height
    scaled = np.asarray(Image.fromarray(scene_frame).resize((side, side), Image.Resampling.BILINEAR))
    out = np.empty((height, width, 3), np.uint8)
    out[:] = BAND_RGB
    left = (width - side) // 2
    out[:, left : left + side] = scaled
    return out


@dataclass(frozen=True)
class FakeDevices:
    video: Path  # camera.y4m
    audio: Path  # microphone.wav
    episode: LiveEpisode

    def chromium_args(self) -> list[str]:
        """Chromium flags: grant media permissions, and use these files as the camera and microphone."""
        return [
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-video-capture={self.video}",
            f"--use-file-for-fake-audio-capture={self.audio}",
        ]


def write_fake_devices(
    episode: LiveEpisode,
    out_dir: str | Path,
    fps: int = 15,
    width: int = 320,
    height: int = 240,
    seconds: float | None = None,
) -> FakeDevices:
    """camera.y4m (the scene at `fps`, frame k shows time k / fps) and microphone.wav (16 kHz PCM16) of
    the episode, both `seconds` long (default: the episode's length), plus episode.json."""
    import soundfile as sf

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    length = episode.duration_s if seconds is None else seconds
    times = np.arange(int(round(length * fps))) / fps
    frames = (camera_frame(video.render_frame(episode.scene, float(t)), width, height) for t in times)
    write_y4m(out / "camera.y4m", frames, width, height, fps)
    audio = np.zeros(int(round(length * SAMPLE_RATE)), np.float32)
    n = min(len(audio), len(episode.user))
    audio[:n] = episode.user[:n]
    sf.write(out / "microphone.wav", np.clip(audio, -1, 1), SAMPLE_RATE, subtype="PCM_16")
    meta = {
        "scene": episode.scene,
        "change_s": episode.change_s,
        "instruction": episode.instruction,
        "reply": episode.reply,
        "duration_s": length,
        "fps": fps,
        "size": [width, height],
    }
    (out / "episode.json").write_text(json.dumps(meta, indent=1) + "\n")
    return FakeDevices(out / "camera.y4m", out / "microphone.wav", episode)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m microturn.server.fakecam", description=__doc__)
    parser.add_argument("out", type=Path, help="folder for camera.y4m, microphone.wav, episode.json")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--fps", type=int, default=15)
    args = parser.parse_args(argv)
    episode = light_episode(args.seed)
    devices = write_fake_devices(episode, args.out, fps=args.fps)
    print(f"{devices.video}, {devices.audio}: light turns green at {episode.change_s:.2f} s")
    print(" ".join(devices.chromium_args()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
