"""A deterministic SentencePiece-style unigram trainer (byte-level), built on the ``tokenizers`` Unigram model.

``tokenizers``' own ``UnigramTrainer`` is not reproducible: its EM sums run over Rust hash maps whose iteration order
changes from process to process, so two runs on the same corpus give different scores (and different ids for the same
text). Ranks and restarts must agree, so training here is a plain, ordered Python loop; only Viterbi segmentation
(deterministic for fixed scores) is delegated to the fast Rust model.

Algorithm (as SentencePiece, with hard EM): seed pieces are the most frequent substrings (frequency x length) of the
pre-tokenized words; then repeat {Viterbi-segment every distinct word, re-estimate each piece's log-probability from
its count, drop the least used pieces (keeping every byte symbol, so encoding stays lossless)} until the vocabulary
fits.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Iterable, Sequence

__all__ = ["train_unigram"]


def _word_counts(texts: Iterable[str]) -> list[tuple[str, int]]:
    from tokenizers import pre_tokenizers

    pre = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(piece for piece, _ in pre.pre_tokenize_str(text))
    return sorted(counts.items())


def _seed_pieces(words: list[tuple[str, int]], alphabet: set[str], n_seed: int, max_len: int) -> dict[str, float]:
    subs: Counter[str] = Counter()
    for word, c in words:
        n = len(word)
        for i in range(n):
            for j in range(i + 2, min(n, i + max_len) + 1):
                subs[word[i:j]] += c
    chars: Counter[str] = Counter()
    for word, c in words:
        for ch in word:
            chars[ch] += c
    best = sorted(subs.items(), key=lambda kv: (-kv[1] * len(kv[0]), kv[0]))[:n_seed]
    freq = {p: float(c) for p, c in best}
    for ch in alphabet:
        freq[ch] = float(chars.get(ch, 0)) + 1.0  # every byte symbol stays reachable
    total = sum(freq.values())
    return {p: math.log(f / total) for p, f in freq.items()}


def _segment_counts(scores: dict[str, float], words: list[tuple[str, int]]) -> dict[str, float]:
    from tokenizers import Tokenizer, models

    pieces = sorted(scores)
    tok = Tokenizer(models.Unigram([(p, scores[p]) for p in pieces], unk_id=None, byte_fallback=False))
    counts = dict.fromkeys(pieces, 0.0)
    encodings = tok.encode_batch([w for w, _ in words], add_special_tokens=False)
    for (_, c), enc in zip(words, encodings):
        for i in enc.ids:
            counts[pieces[i]] += c
    return counts


def _rescore(counts: dict[str, float], alphabet: set[str]) -> dict[str, float]:
    kept = {p: c + (1.0 if p in alphabet else 0.0) for p, c in counts.items() if c > 0 or p in alphabet}
    total = sum(kept.values())
    return {p: math.log(c / total) for p, c in kept.items()}


def train_unigram(
    texts: Iterable[str],
    vocab_size: int,
    special_tokens: Sequence[str],
    unk_token: str,
    *,
    max_piece_length: int = 16,
    shrinking_factor: float = 0.75,
    seed_factor: int = 4,
    em_iterations: int = 2,
) -> str:
    """Train a byte-level unigram tokenizer deterministically; return it as a ``tokenizer.json`` string.

    Args:
        texts: the corpus documents (iterated once).
        vocab_size: target vocabulary size including ``special_tokens``.
        special_tokens: special token strings; they get ids ``0..len-1`` in this order.
        unk_token: one of ``special_tokens``, the model's unknown token (never produced for byte-level input).
        max_piece_length: longest piece (in byte symbols).
        shrinking_factor: fraction of pieces kept per pruning round.
        seed_factor: seed vocabulary = ``seed_factor * vocab_size`` substrings (plus the 256 byte symbols).
        em_iterations: hard-EM re-estimations per pruning round.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    target = vocab_size - len(special_tokens)
    words = _word_counts(texts)
    scores = _seed_pieces(words, alphabet, seed_factor * vocab_size, max_piece_length)
    while True:
        for _ in range(em_iterations):
            counts = _segment_counts(scores, words)
            scores = _rescore(counts, alphabet)
        if len(scores) <= target:
            break
        keep = max(target, int(len(scores) * shrinking_factor))
        by_use = sorted((p for p in scores if p not in alphabet), key=lambda p: (-counts[p], p))
        kept = alphabet | set(by_use[: max(0, keep - len(alphabet))])
        scores = {p: s for p, s in scores.items() if p in kept}
    vocab = [(t, 0.0) for t in special_tokens] + sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
    tok = Tokenizer(models.Unigram(vocab, unk_id=list(special_tokens).index(unk_token), byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(special_tokens))
    return tok.to_str()
