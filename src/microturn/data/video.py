"""Procedural video for the proactive episodes: scenes drawn with numpy from a JSON-serialisable spec.

A scene is a pure function of (spec, time): `render_frame(spec, t)` gives the RGB uint8 frame at `t`
seconds, so a corpus stores only the spec (`video.json`) and training renders the frames of a crop when
it needs them (memory stays flat). Objects:
  light    a traffic light whose lit lamp changes from red to green at `change`
  ball     a ball bouncing inside a box that stops at `stop` (null: never)
  figure   a stick figure with a motion program: `still`, `hand_up` (one arm goes up at `time`), `reps`
           (squats or arm raises, one cycle per [start, end] pair), `wave` (one arm waves in [start, end])
  spinner  a bar rotating about its centre between `start` and `end` (still outside)
Backgrounds are a colour gradient with random rectangles of clutter; every frame gets a little noise from
(seed, frame time), so the model cannot memorise pixels. A frame takes about 0.5 ms.

Micro-turn t's frame is the one captured at `frame_time(t)` = the middle of its 200 ms: the runtime passes
the latest frame pushed while that micro-turn's audio arrived (EngineConfig.video_interval_ms = 200), and
the training data and the proactive evaluation render exactly that frame.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

SIZE = 160  # ModelConfig.video_size
FRAME_PHASE = 0.5  # a micro-turn's frame is captured this far into it (fraction of a micro-turn)
LIGHT_COLOURS = {"red": (235, 40, 30), "yellow": (240, 200, 30), "green": (40, 220, 70)}


def frame_time(turn: int, turn_s: float = 0.2) -> float:
    """Seconds at which micro-turn `turn`'s frame is captured."""
    return (turn + FRAME_PHASE) * turn_s


@lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    return y, x


def _box(size: int, x0: float, y0: float, x1: float, y1: float) -> tuple[slice, slice] | None:
    lo_x, hi_x = max(int(math.floor(x0)), 0), min(int(math.ceil(x1)) + 1, size)
    lo_y, hi_y = max(int(math.floor(y0)), 0), min(int(math.ceil(y1)) + 1, size)
    if lo_x >= hi_x or lo_y >= hi_y:
        return None
    return slice(lo_y, hi_y), slice(lo_x, hi_x)


def _fill(img: np.ndarray, region: tuple[slice, slice], mask: np.ndarray, colour) -> None:
    img[region][mask] = np.asarray(colour, dtype=np.float32)


def draw_rect(img: np.ndarray, x0: float, y0: float, x1: float, y1: float, colour) -> None:
    region = _box(img.shape[0], x0, y0, x1 - 1, y1 - 1)
    if region is not None:
        img[region] = np.asarray(colour, dtype=np.float32)


def draw_disc(img: np.ndarray, cx: float, cy: float, r: float, colour) -> None:
    region = _box(img.shape[0], cx - r, cy - r, cx + r, cy + r)
    if region is None:
        return
    y, x = _grid(img.shape[0])
    yy, xx = y[region], x[region]
    _fill(img, region, (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r, colour)


def draw_line(img: np.ndarray, a: tuple[float, float], b: tuple[float, float], width: float, colour) -> None:
    """A thick segment from a to b (x, y) with round caps."""
    (ax, ay), (bx, by) = a, b
    h = width / 2
    region = _box(img.shape[0], min(ax, bx) - h, min(ay, by) - h, max(ax, bx) + h, max(ay, by) + h)
    if region is None:
        return
    y, x = _grid(img.shape[0])
    yy, xx = y[region], x[region]
    dx, dy = bx - ax, by - ay
    length2 = dx * dx + dy * dy
    u = np.clip(((xx - ax) * dx + (yy - ay) * dy) / length2, 0.0, 1.0) if length2 > 0 else 0.0
    _fill(img, region, (xx - ax - u * dx) ** 2 + (yy - ay - u * dy) ** 2 <= h * h, colour)


# --- objects --------------------------------------------------------------------------------------------
def _light(img: np.ndarray, o: dict, t: float) -> None:
    x, y, w = o["x"], o["y"], o["w"]
    h = 2.6 * w
    draw_rect(img, x, y, x + w, y + h, o.get("housing", (30, 30, 30)))
    lit = o.get("after", "green") if t >= o["change"] else o.get("before", "red")
    r = 0.36 * w
    for k, name in enumerate(("red", "yellow", "green")):
        colour = LIGHT_COLOURS[name]
        if name != lit:
            colour = tuple(0.22 * c + 20 for c in colour)
        draw_disc(img, x + w / 2, y + h * (k + 0.5) / 3, r, colour)


def _reflect(p: np.ndarray | float, lo: float, hi: float) -> float:
    """Position of a point moving freely, bounced between lo and hi (a triangle wave)."""
    span = hi - lo
    q = (p - lo) % (2 * span)
    return float(lo + (q if q <= span else 2 * span - q))


def _ball(img: np.ndarray, o: dict, t: float) -> None:
    stop = o.get("stop")
    moving = t if stop is None else min(t, stop)
    r = o["r"]
    x0, y0, x1, y1 = o["box"]
    cx = _reflect(o["x"] + o["vx"] * moving, x0 + r, x1 - r)
    cy = _reflect(o["y"] + o["vy"] * moving, y0 + r, y1 - r)
    draw_disc(img, cx, cy, r, o["colour"])


def _smooth(u: float) -> float:
    u = min(max(u, 0.0), 1.0)
    return u * u * (3 - 2 * u)


def _figure_pose(m: dict, t: float) -> tuple[float, float, float]:
    """(left arm angle, right arm angle, squat depth 0..1); angles in degrees from straight down,
    raised outwards (180 = straight up)."""
    kind = m["kind"]
    rest = 20.0
    if kind == "hand_up":
        angle = rest + (170.0 - rest) * _smooth((t - m["time"]) / m.get("rise", 0.3))
        return (angle, rest, 0.0) if m.get("arm", "left") == "left" else (rest, angle, 0.0)
    if kind == "wave":
        if m["start"] <= t < m["end"]:
            # the arm goes up in 0.25 s and swings +-25 degrees at `rate` Hz
            up = _smooth(min(t - m["start"], m["end"] - t) / 0.25)
            swing = 25.0 * math.sin(2 * math.pi * m.get("rate", 2.0) * (t - m["start"]))
            angle = rest + (140.0 - rest) * up + swing * up
        else:
            angle = rest
        return (angle, rest, 0.0) if m.get("arm", "left") == "left" else (rest, angle, 0.0)
    if kind == "reps":
        phase = 0.0
        for start, end in m["reps"]:
            if start <= t < end:
                phase = (1 - math.cos(2 * math.pi * (t - start) / (end - start))) / 2
                break
        if m.get("style", "squat") == "squat":
            arms = rest + 60.0 * phase  # arms forward while squatting
            return (arms, arms, phase)
        arms = rest + (165.0 - rest) * phase
        return (arms, arms, 0.0)
    return (rest, rest, 0.0)


def _figure(img: np.ndarray, o: dict, t: float) -> None:
    left, right, squat = _figure_pose(o["motion"], t)
    s, x, foot_y = o["scale"], o["x"], o["y"]  # y: where the feet stand
    width = max(2.0, 0.09 * s)
    colour = o["colour"]
    leg = 0.42 * s
    hip_y = foot_y - leg * (1 - 0.45 * squat)
    knee_out = 0.18 * s * squat
    torso = 0.38 * s
    shoulder_y = hip_y - torso
    head_r = 0.11 * s
    for side in (-1, 1):
        knee = (x + side * (0.06 * s + knee_out), (hip_y + foot_y) / 2)
        draw_line(img, (x + side * 0.04 * s, hip_y), knee, width, colour)
        draw_line(img, knee, (x + side * 0.08 * s, foot_y), width, colour)
    draw_line(img, (x, hip_y), (x, shoulder_y), width * 1.3, colour)
    draw_disc(img, x, shoulder_y - head_r * 1.3, head_r, o.get("head", colour))
    arm = 0.34 * s
    for side, angle in ((-1, left), (1, right)):
        a = math.radians(angle)
        hand = (x + side * arm * math.sin(a), shoulder_y + arm * math.cos(a))
        draw_line(img, (x, shoulder_y + 0.03 * s), hand, width, colour)
        draw_disc(img, hand[0], hand[1], width * 0.9, o.get("hand", colour))


def _spinner(img: np.ndarray, o: dict, t: float) -> None:
    start, end, speed = o["start"], o["end"], o["speed"]  # speed: turns per second
    turned = speed * (min(max(t, start), end) - start)
    angle = o.get("angle", 0.0) + 2 * math.pi * turned
    cx, cy, r = o["x"], o["y"], o["r"]
    dx, dy = r * math.cos(angle), r * math.sin(angle)
    draw_disc(img, cx, cy, r * 1.08, o.get("disc", (200, 200, 200)))
    draw_line(img, (cx - dx, cy - dy), (cx + dx, cy + dy), max(2.0, 0.25 * r), o["colour"])
    draw_disc(img, cx + dx, cy + dy, 0.2 * r, o.get("tip", (220, 30, 30)))
    draw_disc(img, cx, cy, 0.1 * r, (20, 20, 20))


_OBJECTS = {"light": _light, "ball": _ball, "figure": _figure, "spinner": _spinner}


@lru_cache(maxsize=32)
def _background(key: str) -> np.ndarray:
    """The static background of a scene (cached: the spec's JSON is the key)."""
    import json

    bg = json.loads(key)
    size = bg["size"]
    y, _x = _grid(size)
    top, bottom = np.asarray(bg["top"], np.float32), np.asarray(bg["bottom"], np.float32)
    w = (y / (size - 1))[..., None]
    img = top * (1 - w) + bottom * w
    for x0, y0, x1, y1, *colour in bg.get("clutter", []):
        draw_rect(img, x0, y0, x1, y1, colour)
    return img


def render_frame(spec: dict, t: float) -> np.ndarray:
    """The scene at `t` seconds: RGB uint8 [size, size, 3] (size = spec["size"], default 160)."""
    import json

    img = _background(json.dumps(spec["background"] | {"size": spec.get("size", SIZE)}, sort_keys=True))
    img = img.copy()
    for o in spec["objects"]:
        _OBJECTS[o["type"]](img, o, t)
    noise = float(spec.get("noise", 0.0))
    if noise > 0:
        rng = np.random.default_rng([int(spec.get("seed", 0)), int(round(t * 1000))])
        img += rng.standard_normal(img.shape[:2], dtype=np.float32)[..., None] * noise
    return np.clip(img, 0, 255).astype(np.uint8)


def render_frames(spec: dict, times: list[float] | np.ndarray) -> np.ndarray:
    """Frames at `times`: uint8 [n, size, size, 3]."""
    size = spec.get("size", SIZE)
    if len(times) == 0:
        return np.zeros((0, size, size, 3), np.uint8)
    return np.stack([render_frame(spec, float(t)) for t in times])


# --- random scenes ---------------------------------------------------------------------------------------
def _colour(rng: np.random.Generator, lo: int = 0, hi: int = 256) -> list[int]:
    return [int(c) for c in rng.integers(lo, hi, size=3)]


def _distinct(rng: np.random.Generator, avoid: list[list[int]], min_dist: float = 120.0) -> list[int]:
    for _ in range(50):
        c = _colour(rng)
        if all(np.linalg.norm(np.subtract(c, a)) >= min_dist for a in avoid):
            return c
    return [255 - v for v in avoid[0]]


def random_background(rng: np.random.Generator, size: int = SIZE) -> dict:
    top = _colour(rng, 40, 230)
    bottom = [int(np.clip(c + rng.integers(-60, 61), 0, 255)) for c in top]
    clutter = []
    for _ in range(int(rng.integers(0, 5))):
        x0, y0 = (float(v) for v in rng.uniform(0, size - 10, 2))
        w, h = (float(v) for v in rng.uniform(6, 40, 2))
        clutter.append(
            [round(x0, 1), round(y0, 1), round(x0 + w, 1), round(y0 + h, 1), *_colour(rng, 30, 230)]
        )
    return {"top": top, "bottom": bottom, "clutter": clutter}


def scene(rng: np.random.Generator, background: dict, objects: list[dict], size: int = SIZE) -> dict:
    return {
        "size": size,
        "seed": int(rng.integers(2**31)),
        "noise": round(float(rng.uniform(2.0, 8.0)), 2),
        "background": background,
        "objects": objects,
    }


def background_colours(background: dict) -> list[list[int]]:
    """Colours an object should stand out from."""
    return [background["top"], background["bottom"]]


def random_light(rng: np.random.Generator, change: float, size: int = SIZE) -> dict:
    w = float(rng.uniform(18, 30))
    return {
        "type": "light",
        "x": round(float(rng.uniform(4, size - w - 4)), 1),
        "y": round(float(rng.uniform(4, size - 2.6 * w - 4)), 1),
        "w": round(w, 1),
        "change": round(change, 3),
        "housing": _colour(rng, 10, 60),
    }


def random_ball(
    rng: np.random.Generator, stop: float | None, avoid: list[list[int]], size: int = SIZE
) -> dict:
    r = float(rng.uniform(7, 14))
    speed = float(rng.uniform(30, 70))  # pixels per second
    angle = float(rng.uniform(0, 2 * math.pi))
    x0, y0 = float(rng.uniform(0, size * 0.3)), float(rng.uniform(0, size * 0.3))
    x1, y1 = float(rng.uniform(size * 0.7, size)), float(rng.uniform(size * 0.7, size))
    return {
        "type": "ball",
        "x": round(float(rng.uniform(x0 + r, x1 - r)), 1),
        "y": round(float(rng.uniform(y0 + r, y1 - r)), 1),
        "vx": round(speed * math.cos(angle), 2),
        "vy": round(speed * math.sin(angle), 2),
        "r": round(r, 1),
        "box": [round(x0, 1), round(y0, 1), round(x1, 1), round(y1, 1)],
        "colour": _distinct(rng, avoid),
        "stop": None if stop is None else round(stop, 3),
    }


def random_figure(rng: np.random.Generator, motion: dict, avoid: list[list[int]], size: int = SIZE) -> dict:
    scale = float(rng.uniform(0.55, 0.8)) * size
    colour = _distinct(rng, avoid)
    return {
        "type": "figure",
        "x": round(float(rng.uniform(0.3 * scale, size - 0.3 * scale)), 1),
        "y": round(float(rng.uniform(0.95 * scale + 4, size - 3)), 1),
        "scale": round(scale, 1),
        "colour": colour,
        "head": _distinct(rng, [colour] + avoid, 60.0),
        "motion": motion,
    }


def random_spinner(
    rng: np.random.Generator, start: float, end: float, avoid: list[list[int]], size: int = SIZE
) -> dict:
    r = float(rng.uniform(18, 34))
    return {
        "type": "spinner",
        "x": round(float(rng.uniform(r + 4, size - r - 4)), 1),
        "y": round(float(rng.uniform(r + 4, size - r - 4)), 1),
        "r": round(r, 1),
        "speed": round(float(rng.uniform(0.6, 1.6) * rng.choice([-1, 1])), 3),
        "angle": round(float(rng.uniform(0, 2 * math.pi)), 3),
        "start": round(start, 3),
        "end": round(end, 3),
        "colour": _distinct(rng, avoid),
        "disc": _colour(rng, 120, 256),
    }


def validate_spec(spec: object, where: str) -> dict:
    """Check the shape of a scene spec (ValueError naming `where`); returns it."""
    if not isinstance(spec, dict) or not isinstance(spec.get("objects"), list):
        raise ValueError(f"{where}: a scene spec must be an object with an 'objects' list")
    if not isinstance(spec.get("background"), dict) or "top" not in spec["background"]:
        raise ValueError(f"{where}: a scene spec needs a 'background' with 'top' and 'bottom' colours")
    for i, o in enumerate(spec["objects"]):
        if not isinstance(o, dict) or o.get("type") not in _OBJECTS:
            raise ValueError(f"{where}: objects[{i}] has no known type (one of {', '.join(_OBJECTS)})")
    return spec
