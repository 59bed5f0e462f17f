"""The source text: real two-person chats of the `chitchat-dataset` package, cleaned into speakable turns.

The package ships one JSON object {conversation key: {"messages": [[{"text", "timestamp", "sender"}, ...],
...]}}: each message is a run of lines by one sender. We merge consecutive lines of one sender into a turn,
clean the text into words a TTS voice can say, and split chats into train/valid/test by a hash of the
conversation key (stable across machines and package orderings).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

SPLITS = ("train", "valid", "test")
# Percent of chats per split, by hash bucket: 90 / 5 / 5.
_SPLIT_BOUNDS = {"train": (0, 90), "valid": (90, 95), "test": (95, 100)}

# Chat shorthand read aloud as written would be wrong; the common ones become the spoken words.
_SPOKEN = {
    "im": "i'm",
    "dont": "don't",
    "cant": "can't",
    "wont": "won't",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "isnt": "isn't",
    "thats": "that's",
    "whats": "what's",
    "ive": "i've",
    "youre": "you're",
    "theyre": "they're",
    "its": "it's",
    "lets": "let's",
    "id": "i'd",
    "ill": "i'll",
    "wasnt": "wasn't",
    "arent": "aren't",
    "havent": "haven't",
    "couldnt": "couldn't",
    "shouldnt": "shouldn't",
    "wouldnt": "wouldn't",
    "u": "you",
    "ur": "your",
    "r": "are",
    "ya": "you",
    "pls": "please",
    "plz": "please",
    "thx": "thanks",
    "tho": "though",
    "idk": "i don't know",
    "omg": "oh my god",
    "btw": "by the way",
    "lol": "haha",
    "lmao": "haha",
    "&": "and",
    "%": "percent",
    "w/": "with",
}
_URL = re.compile(r"(https?://\S+|www\.\S+|\S+\.(com|org|net|io)\S*)", re.IGNORECASE)
_NON_SPEAKABLE = re.compile(r"[^a-z0-9'.,?!\s-]")
_CLAUSE_PUNCT = ".,?!"


@dataclass(frozen=True)
class Turn:
    sender: int  # 0 = the chat's first sender, 1 = the other
    text: str  # cleaned: lowercase words, clause punctuation attached to the last word of a clause


@dataclass(frozen=True)
class Chat:
    key: str
    turns: tuple[Turn, ...]


def split_of(key: str) -> str:
    """train / valid / test for a conversation key, from a hash bucket (0-99)."""
    bucket = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 100
    for name, (lo, hi) in _SPLIT_BOUNDS.items():
        if lo <= bucket < hi:
            return name
    raise AssertionError(bucket)


def clean_text(text: str) -> str:
    """Speakable words: lowercase, URLs/emoji/symbols dropped, shorthand expanded, clause punctuation kept.

    Punctuation stays attached to the word before it (',' '.' '?' '!') because the renderer synthesises
    the last word of a clause with its mark, which gives it a falling, continuing or rising contour.
    """
    text = _URL.sub(" ", text.lower())
    text = (
        text.replace("\u2019", "'")
        .replace("&", " & ")
        .replace("%", " percent")
        .replace(";", ",")
        .replace(":", ",")
    )
    text = re.sub(r"([!?.,])\1+", r"\1", text)  # "!!!" -> "!", "..." -> "."
    words: list[str] = []
    for raw in text.split():
        core = raw.strip(_CLAUSE_PUNCT + '"()[]*_~')
        spoken = _SPOKEN.get(core, core)
        spoken = _NON_SPEAKABLE.sub("", spoken).strip("-'")
        trailing = raw[-1] if raw[-1] in _CLAUSE_PUNCT else ""
        if not re.search(r"[a-z0-9]", spoken):
            if trailing and words and words[-1][-1] not in _CLAUSE_PUNCT:
                words[-1] += trailing
            continue
        words.append(spoken + trailing)
    if words and words[-1][-1] not in _CLAUSE_PUNCT:
        words[-1] += "."
    return " ".join(words)


def _package_json() -> Path:
    import chitchat_dataset

    return Path(chitchat_dataset.__file__).with_name("dataset.json")


@lru_cache(maxsize=1)
def load_all_chats() -> tuple[Chat, ...]:
    """Every chat with at least two turns after cleaning, sorted by key."""
    path = _package_json()
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RuntimeError(f"{path}: cannot read the chitchat dataset ({exc})") from exc
    chats = []
    for key in sorted(raw):
        senders: dict[str, int] = {}
        turns: list[Turn] = []
        for message in raw[key]["messages"]:
            for line in message:
                sender = senders.setdefault(line["sender"], len(senders))
                text = clean_text(line["text"])
                if not text or sender > 1:
                    continue
                if turns and turns[-1].sender == sender:
                    turns[-1] = Turn(sender, turns[-1].text + " " + text)
                else:
                    turns.append(Turn(sender, text))
        if len(turns) >= 2:
            chats.append(Chat(key, tuple(turns)))
    return tuple(chats)


def load_chats(split: str) -> list[Chat]:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
    return [chat for chat in load_all_chats() if split_of(chat.key) == split]
