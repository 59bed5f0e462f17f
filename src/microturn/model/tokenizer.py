"""The text tokenizer: lowercase byte-level BPE trained on the corpus text, saved with every checkpoint.

Words are tokenised one at a time with a leading space (" word"), so every word starts with a token that
carries the space marker and a stream of tokens decodes back to words by plain concatenation.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

PAD, UNK, BOS = 0, 1, 2
SPECIALS = ["<pad>", "<unk>", "<s>"]


class TextTokenizer:
    def __init__(self, tokenizer: Tokenizer):
        if [tokenizer.token_to_id(s) for s in SPECIALS] != [PAD, UNK, BOS]:
            raise ValueError(f"tokenizer must have the specials {SPECIALS} at ids 0, 1, 2")
        self.tokenizer = tokenizer
        self.encode_word = lru_cache(maxsize=65536)(self._encode_word)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> TextTokenizer:
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=SPECIALS,
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    @classmethod
    def load(cls, path: str | Path) -> TextTokenizer:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: tokenizer file not found")
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception for malformed JSON
            raise ValueError(f"{path}: not a readable tokenizer ({exc})") from exc
        return cls(tok)

    def save(self, path: str | Path) -> None:
        self.tokenizer.save(str(path))

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def _encode_word(self, word: str) -> tuple[int, ...]:
        return tuple(self.tokenizer.encode(" " + word.strip(), add_special_tokens=False).ids)

    def encode(self, text: str) -> list[int]:
        return [i for word in text.split() for i in self.encode_word(word)]

    def encode_message(self, text: str) -> list[int]:
        """A background message: BOS marks where it starts (the copy pointer drops what is left unsaid of
        the previous one there, and the trunk hears that a new answer begins)."""
        return [BOS, *self.encode(text)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids if int(i) not in (PAD, BOS)]).strip()

    def is_word_start(self, token_id: int) -> bool:
        """True when the token begins a new word (byte-level BPE marks the leading space with 'Ġ')."""
        piece = self.tokenizer.id_to_token(int(token_id))
        return piece is not None and piece.startswith("Ġ")
