"""The shapes world's words: a real CLIP BPE tokenizer over its tiny vocabulary, and a small CLIP text encoder.

Every word a world prompt can contain (GenEval-style and dense prompts alike) is one token, so a
prompt is a short sequence of meaningful ids. Anything else still tokenizes, letter by letter, as a
byte-level BPE tokenizer would, so a typo is no crash. The tokenizer is built from a vocabulary
written here, nothing is downloaded; it is saved with the pipeline like any CLIPTokenizer.

The teacher trains its text encoder from scratch together with the UNet (there is no pretrained
encoder for this language); the world-clip reward reuses the tokenizer with its own encoder.
"""

from __future__ import annotations

from .geometry import RELATIONS
from .prompts import NUMBER_WORDS, plural
from .scene import COLORS, SHAPES

TEMPLATE_WORDS = ("a", "an", "the", "photo", "of", "and", "is", ",", ".")
END_OF_WORD = "</w>"
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def world_words() -> tuple[str, ...]:
    """Every word of every world prompt, in a fixed order (the vocabulary's order depends on it)."""
    relation_words = [w for relation in RELATIONS for w in relation.split()]
    words = [*TEMPLATE_WORDS, *SHAPES, *(plural(s) for s in SHAPES), *COLORS, *NUMBER_WORDS, *relation_words]
    return tuple(dict.fromkeys(words))


def world_tokenizer(max_length: int):
    """A CLIPTokenizer in which every world word is a single token; prompts pad to `max_length`."""
    from transformers import CLIPTokenizer

    vocab, merges = _world_bpe(world_words())
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def world_text_encoder(tokenizer, width: int, layers: int, heads: int, seed: int):
    """A randomly initialised CLIPTextModel sized for the tokenizer (positions = its max length)."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
        num_attention_heads=heads, max_position_embeddings=tokenizer.model_max_length, projection_dim=width,
        hidden_act="gelu", bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIPTextModel(config)


def _world_bpe(words: tuple[str, ...]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level base vocabulary (printable ASCII, with and without the end-of-word mark) plus merges
    that fuse each word into one token.

    Merges are added one at a time, each joining the first two pieces of the word as the merges so far
    cut it. A naive chain per word can be broken by another word's merge ("red" adds r+e, which then
    splits "green" as g, re, ...); a merge appended after all others never changes how an earlier word
    is cut, because BPE applies it only once no earlier merge is left to apply.
    """
    chars = [chr(i) for i in range(33, 127)]  # printable ASCII maps to itself in byte-level BPE
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + END_OF_WORD: len(chars) + i for i, c in enumerate(chars)})
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        pieces = _bpe(word, ranks)
        while len(pieces) > 1:
            ranks[(pieces[0], pieces[1])] = len(ranks)
            vocab.setdefault(pieces[0] + pieces[1], len(vocab))
            pieces = _bpe(word, ranks)
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)
    return vocab, sorted(ranks, key=ranks.get)


def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """How byte-pair encoding cuts `word`: repeatedly join the adjacent pair with the lowest rank."""
    pieces = list(word[:-1]) + [word[-1] + END_OF_WORD]
    while len(pieces) > 1:
        pairs = [(ranks.get(pair, len(ranks)), i) for i, pair in enumerate(zip(pieces, pieces[1:]))]
        rank, i = min(pairs)
        if rank == len(ranks):
            break
        pieces[i : i + 2] = [pieces[i] + pieces[i + 1]]
    return pieces
