"""SentencePiece tokenizer: T5 conventions, parity with transformers' T5Tokenizer, truncation, empty prompts."""

import logging
import shutil

import numpy as np
import pytest
from transformers import T5Tokenizer

from imagen_jax.text.tokenizer import EOS_ID, Tokenizer, train_tokenizer

CORPUS = [
    "A large red circle at the top, next to 3 small squares!",
    "Two blue triangles (left) and 12 green dots; the sky is grey.",
    "Un café près de la gare: crème brûlée à 7€, naïve façade.",
    "Photo of a dog running on the beach at 5:30 pm in 2022.",
    "An astronaut riding a horse - oil painting, high quality #art",
    "Ünïcödé: 東京の夜景, Москва, Αθήνα; emoji-free text.",
    "What's 2+2? It's 4 -- isn't it? \"Yes\", she said.",
] * 5

PROMPTS = [
    "a large red circle at the top",
    "Hello, World!!! (punctuation); colons: and \"quotes\" 'single' -- dashes...",
    "digits 0123456789 and 3.14159, 1,000,000 and 12:30",
    "non-ASCII: café naïve façade crème brûlée Москва 東京 Αθήνα ß æ ø å",
    "unknown symbols ☃ ★ ♞ and 🦄 emoji",
    "   leading and   repeated   spaces   ",
    "tabs\tand\nnewlines",
    "UPPER lower MiXeD",
    " ".join(["a very long prompt about red circles and blue squares"] * 30),
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tok")
    tokenizer = train_tokenizer(CORPUS, str(directory / "spiece.model"), vocab_size=160)
    return tokenizer, directory


@pytest.fixture(scope="module")
def hf_tokenizer(trained):
    return T5Tokenizer.from_pretrained(str(trained[1]))


def test_conventions_and_determinism(trained, tmp_path):
    tokenizer, directory = trained
    again = train_tokenizer(CORPUS, str(tmp_path / "again.model"), vocab_size=160)
    assert (directory / "spiece.model").read_bytes() == (tmp_path / "again.model").read_bytes()
    assert again.identity == tokenizer.identity
    assert [tokenizer._sp.id_to_piece(i) for i in range(3)] == ["<pad>", "</s>", "<unk>"]
    assert 10 < tokenizer.vocab_size <= 160


def test_vocab_smaller_than_alphabet_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="distinct characters"):
        train_tokenizer(CORPUS, str(tmp_path / "s.model"), vocab_size=40)


def test_tiny_templated_corpus_keeps_whole_words(tmp_path):
    # every word is always followed by the same next character: SentencePiece alone splits such words
    sizes, colours, shapes = ("large", "small"), ("red", "blue", "green", "yellow"), ("circle", "square")
    places = ("at the top", "on the left", "in the centre", "at the bottom")
    captions = [f"a {s} {c} {h} {p}" for s in sizes for c in colours for h in shapes for p in places]
    tokenizer = train_tokenizer(captions, str(tmp_path / "s.model"), vocab_size=64)
    assert tokenizer.vocab_size <= 64
    for caption in captions[::7]:
        assert len(tokenizer.encode(caption)) == len(caption.split()) + 1, caption  # one piece a word + EOS


def test_ids_match_transformers(trained, hf_tokenizer):
    tokenizer = trained[0]
    for prompt in PROMPTS:
        assert tokenizer.encode(prompt) == hf_tokenizer(prompt).input_ids, prompt


def test_encode_batch_matches_transformers_padding_and_truncation(trained, hf_tokenizer):
    tokenizer = trained[0]
    length = 24
    ids, mask = tokenizer.encode_batch(PROMPTS, length)
    ref = hf_tokenizer(PROMPTS, max_length=length, padding="max_length", truncation=True, return_tensors="np")
    assert ids.dtype == np.int32 and mask.dtype == bool and ids.shape == (len(PROMPTS), length)
    np.testing.assert_array_equal(ids, ref["input_ids"])
    np.testing.assert_array_equal(mask, ref["attention_mask"].astype(bool))


def test_truncation_warns_once_with_count(trained, caplog):
    tokenizer = Tokenizer.load(trained[0].source)
    long = PROMPTS[-1]
    with caplog.at_level(logging.WARNING):
        ids, mask = tokenizer.encode_batch([long, "a red circle", long], 10)
        tokenizer.encode_batch([long], 10)
    warnings = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("2 of 3 prompts")
    assert tokenizer.num_truncated == 3
    assert mask[0].all() and ids[0, -1] == EOS_ID


def test_empty_prompt_is_all_padding(trained):
    ids, mask = trained[0].encode_batch(["", "   ", "a red circle"], 8)
    assert not mask[:2].any() and not ids[:2].any()
    assert mask[2].any()


def test_decode_roundtrip(trained):
    tokenizer = trained[0]
    ids, mask = tokenizer.encode_batch(["a large red circle at the top"], 64)
    assert not mask[0, -1]  # not truncated
    assert tokenizer.decode(ids[0]) == "a large red circle at the top"


def test_load_errors(tmp_path, trained):
    with pytest.raises(FileNotFoundError, match="missing.model"):
        Tokenizer.load(str(tmp_path / "missing.model"))
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_prefix=str(tmp_path / "bos"), vocab_size=100, minloglevel=2
    )
    with pytest.raises(ValueError, match="T5's conventions"):
        Tokenizer.load(str(tmp_path / "bos.model"))
    shutil.copy(trained[0].source, tmp_path / "copy.model")
    assert Tokenizer.load(str(tmp_path / "copy.model")).identity == trained[0].identity
