"""Voices: the assistant's one voice and the pool the users are drawn from.

A voice is named by an id string that fully determines its sound, so the TTS cache can key units on
(voice id, text) and a timeline's `voice` field can be turned back into the voice that rendered it.
  piper:joe:ls=1.00                 piper joe-us at a phoneme length scale (speed)
  espeak:en-gb+m3:p=40:s=160        espeak-ng voice+variant at pitch (0-99) and speed (words per minute)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

ESPEAK_LANGUAGES = (
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
)
ESPEAK_VARIANTS = (
    "m1",
    "m2",
    "m3",
    "m4",
    "m5",
    "m6",
    "m7",
    "f1",
    "f2",
    "f3",
    "f4",
    "Annie",
    "Andy",
    "Paul",
    "Linda",
    "Michael",
    "Steph",
    "grandpa",
    "female2",
)
_ID = re.compile(
    r"^(?:piper:joe:ls=(?P<ls>\d+\.\d\d)|espeak:(?P<name>[A-Za-z0-9-]+\+[A-Za-z0-9_]+)"
    r":p=(?P<p>\d+):s=(?P<s>\d+))$"
)


@dataclass(frozen=True)
class Voice:
    engine: str  # "piper" | "espeak"
    length_scale: float = 1.0  # piper only
    espeak_name: str = ""  # espeak only: "language+variant"
    pitch: int = 50
    speed: int = 175

    @property
    def id(self) -> str:
        if self.engine == "piper":
            return f"piper:joe:ls={self.length_scale:.2f}"
        return f"espeak:{self.espeak_name}:p={self.pitch}:s={self.speed}"

    @staticmethod
    def from_id(voice_id: str) -> Voice:
        match = _ID.match(voice_id)
        if not match:
            raise ValueError(f"unknown voice id {voice_id!r}")
        if match["ls"]:
            return Voice("piper", length_scale=float(match["ls"]))
        return Voice("espeak", espeak_name=match["name"], pitch=int(match["p"]), speed=int(match["s"]))


ASSISTANT_VOICE = Voice("piper", length_scale=1.0)


def sample_user_voice(rng: np.random.Generator, piper_share: float = 0.15) -> Voice:
    """A user voice: mostly espeak-ng (many accents/variants, pitch and speed on a coarse grid so units
    are reused across conversations), sometimes piper joe at another speed."""
    if rng.random() < piper_share:
        return Voice("piper", length_scale=float(rng.choice([0.85, 0.9, 1.1, 1.15, 1.2])))
    name = f"{rng.choice(ESPEAK_LANGUAGES)}+{rng.choice(ESPEAK_VARIANTS)}"
    return Voice(
        "espeak",
        espeak_name=name,
        pitch=int(rng.choice(np.arange(25, 80, 10))),
        speed=int(rng.choice(np.arange(160, 240, 10))),
    )


def sample_other_voice(rng: np.random.Generator, avoid: Voice) -> Voice:
    """A third party's voice (background talk), never the user's own."""
    while True:
        voice = sample_user_voice(rng, piper_share=0.0)
        if voice != avoid:
            return voice
