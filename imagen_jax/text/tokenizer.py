"""SentencePiece tokenizer with T5's conventions: pad 0, EOS 1 appended, unk 2, no BOS.

Load a T5 ``spiece.model`` (``Tokenizer.load``) or train a small one on captions (``train_tokenizer``).
Prompts encode to fixed-length (ids, mask) arrays; an empty prompt is all padding (the unconditional case).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Sequence

import numpy as np
import sentencepiece as spm

from imagen_jax.errors import MissingFileError, UserError

PAD_ID = 0
EOS_ID = 1
UNK_ID = 2

log = logging.getLogger(__name__)


class Tokenizer:
    """A SentencePiece model following T5's id conventions."""

    def __init__(self, model_proto: bytes, source: str = "<memory>"):
        self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self._proto = model_proto
        self.source = source
        self._warned_truncation = False
        self.num_truncated = 0  # prompts cut to max_length so far (all calls)
        conventions = (self._sp.pad_id(), self._sp.eos_id(), self._sp.unk_id(), self._sp.bos_id())
        if conventions != (PAD_ID, EOS_ID, UNK_ID, -1):
            raise UserError(
                f"SentencePiece model {source} does not follow T5's conventions: (pad, eos, unk, bos) ids are "
                f"{conventions}, expected ({PAD_ID}, {EOS_ID}, {UNK_ID}, -1). Use T5's spiece.model or "
                "train one with imagen_jax.text.tokenizer.train_tokenizer."
            )

    @classmethod
    def load(cls, path: str) -> Tokenizer:
        """Reads a ``spiece.model`` file."""
        if not os.path.isfile(path):
            raise MissingFileError(
                f"SentencePiece model not found: {path!r} (text.spiece_model or spiece.model)"
            )
        with open(path, "rb") as f:
            return cls(f.read(), source=path)

    @property
    def vocab_size(self) -> int:
        """Number of SentencePiece pieces (a T5 checkpoint's embedding may be larger, e.g. 32128 > 32000)."""
        return self._sp.get_piece_size()

    @property
    def identity(self) -> str:
        """Hex digest of the serialized model: equal digests give equal ids."""
        return hashlib.sha256(self._proto).hexdigest()[:16]

    def encode(self, prompt: str) -> list[int]:
        """Token ids of one prompt, EOS appended, no truncation; [] for an empty or blank prompt."""
        if not prompt.strip():
            return []
        return self._sp.encode(prompt, out_type=int) + [EOS_ID]

    def encode_batch(self, prompts: Sequence[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
        """Returns (ids int32 [B, max_length], mask bool [B, max_length]), right-padded with 0.

        Longer prompts keep their first max_length - 1 tokens and EOS (as transformers' T5Tokenizer does);
        the first truncation logs a warning with the number of prompts cut.
        """
        if isinstance(prompts, str):
            raise TypeError("encode_batch takes a sequence of prompts, not one string")
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        pieces = self._sp.encode([p if p.strip() else "" for p in prompts], out_type=int)
        ids = np.zeros((len(prompts), max_length), np.int32)
        mask = np.zeros((len(prompts), max_length), bool)
        cut = 0
        for row, tokens in enumerate(pieces):
            if not tokens:
                continue  # empty prompt: all padding, the unconditional case
            if len(tokens) + 1 > max_length:
                tokens = tokens[: max_length - 1]
                cut += 1
            tokens = tokens + [EOS_ID]
            ids[row, : len(tokens)] = tokens
            mask[row, : len(tokens)] = True
        self._note_truncation(cut, len(prompts), max_length)
        return ids, mask

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of one id sequence, stopping at the first EOS; padding is ignored."""
        out = []
        for i in np.asarray(ids).reshape(-1).tolist():
            if i == EOS_ID:
                break
            if i != PAD_ID:
                out.append(int(i))
        return self._sp.decode(out)

    def save(self, path: str) -> None:
        """Writes the model as a ``spiece.model`` file (atomically)."""
        _write_atomic(path, self._proto)

    def _note_truncation(self, cut: int, total: int, max_length: int) -> None:
        self.num_truncated += cut
        if cut and not self._warned_truncation:
            self._warned_truncation = True
            log.warning(
                "%d of %d prompts are longer than max_length=%d tokens (EOS included) and were truncated; "
                "raise text.max_length to keep them whole. This warning is shown once.",
                cut,
                total,
                max_length,
            )


def train_tokenizer(texts: Sequence[str], out_path: str, vocab_size: int) -> Tokenizer:
    """Trains a unigram SentencePiece model on texts (T5 ids: pad 0, eos 1, unk 2, no bos), writes it, loads it.

    Deterministic for the same texts and vocab_size; vocab_size is an upper bound, so a tiny corpus works.
    """
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ValueError("train_tokenizer needs at least one non-empty text")
    chars = {c for t in texts for c in t if not c.isspace()}
    if vocab_size < len(chars) + 4:
        raise ValueError(
            f"vocab_size {vocab_size} is too small: the texts have {len(chars)} distinct characters, and "
            f"pad, eos, unk and the word boundary need 4 more; use at least {len(chars) + 4}"
        )
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts + _word_pairs(texts)),
        model_writer=model,
        model_type="unigram",
        vocab_size=vocab_size,
        hard_vocab_limit=False,  # a few distinct words cannot fill a larger vocabulary
        pad_id=PAD_ID,
        eos_id=EOS_ID,
        unk_id=UNK_ID,
        bos_id=-1,
        character_coverage=1.0,
        num_threads=1,  # deterministic
        shuffle_input_sentence=False,
        input_sentence_size=0,
        minloglevel=2,
    )
    _write_atomic(out_path, model.getvalue())
    return Tokenizer(model.getvalue(), source=out_path)


def _word_pairs(texts: Sequence[str]) -> list[str]:
    """Each distinct word once followed by a space and once by a sentence end ("w1 w2", "w2 w3", ..., "wn w1").

    SentencePiece seeds its unigram vocabulary with right-branching substrings of a suffix array, so in a
    templated corpus where "circle" is always followed by " at", the whole word never becomes a candidate and
    captions split into characters; these pairs make every word a candidate.
    """
    words = sorted({w for t in texts for w in t.split()})
    return [f"{a} {b}" for a, b in zip(words, words[1:] + words[:1], strict=True)]


def _write_atomic(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
