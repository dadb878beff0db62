"""A generated English-like corpus for the character-level language model.

The text is produced by a small grammar driven by a SplitMix64 generator written out here, so
it is the same string on every machine, Python and PyTorch version (no files, no downloads,
no library RNG whose stream could change). It has structure at several scales (spelling,
agreement of words in a phrase, sentence and paragraph shape) for a small model to learn: a
unigram model scores about 2.9 nats per character, a model that has learned words far less.
"""

from __future__ import annotations

import functools

__all__ = ["CORPUS_CHARS", "corpus"]

CORPUS_CHARS = 200_000
_SEED = 20240601
_MASK = (1 << 64) - 1

_SUBJECTS = (
    "the model", "the optimizer", "a small network", "the gradient", "every layer",
    "the learning rate", "the loss", "each worker", "the scheduler", "a deep stack",
    "the engineer", "the sweep", "the first block", "the last layer", "the clipping rule",
)
_VERBS = (
    "grows", "shrinks", "explodes", "settles", "drifts", "spikes", "recovers", "diverges",
    "converges", "oscillates", "vanishes", "stalls", "improves", "fails", "waits",
)
_TRANSITIVE = (
    "clips", "scales", "tracks", "measures", "records", "prunes", "samples", "warms",
    "restores", "reports", "smooths", "checks", "halves", "doubles", "resets",
)
_OBJECTS = (
    "the norm", "every update", "the weights", "a noisy batch", "the trace", "the threshold",
    "its momentum", "the signal", "the step size", "each trial", "the bias", "the scale",
)
_ADVERBS = (
    "slowly", "quickly", "again", "at once", "without warning", "after warm-up", "by night",
    "in bursts", "every step", "on the first epoch", "quietly", "twice",
)
_CONNECTIVES = ("and", "but", "so", "while", "because", "until", "when")


class _SplitMix64:
    def __init__(self, seed: int) -> None:
        self.state = seed & _MASK

    def next(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & _MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
        return z ^ (z >> 31)

    def below(self, n: int) -> int:
        return self.next() % n

    def pick(self, options: tuple[str, ...]) -> str:
        return options[self.below(len(options))]


def _clause(rng: _SplitMix64) -> str:
    subject = rng.pick(_SUBJECTS)
    if rng.below(2):
        clause = f"{subject} {rng.pick(_VERBS)}"
    else:
        clause = f"{subject} {rng.pick(_TRANSITIVE)} {rng.pick(_OBJECTS)}"
    if rng.below(3) == 0:
        clause += f" {rng.pick(_ADVERBS)}"
    return clause


def _sentence(rng: _SplitMix64) -> str:
    text = _clause(rng)
    for _ in range(rng.below(3)):
        text += f"{',' if rng.below(2) else ''} {rng.pick(_CONNECTIVES)} {_clause(rng)}"
    roll = rng.below(10)
    end = "." if roll < 8 else "!" if roll == 8 else "?"
    return text[0].upper() + text[1:] + end


@functools.cache
def corpus(n_chars: int = CORPUS_CHARS) -> str:
    """The first ``n_chars`` characters of the generated corpus (paragraphs of sentences)."""
    rng = _SplitMix64(_SEED)
    parts: list[str] = []
    size = 0
    while size < n_chars:
        paragraph = " ".join(_sentence(rng) for _ in range(2 + rng.below(5))) + "\n"
        parts.append(paragraph)
        size += len(paragraph)
    return "".join(parts)[:n_chars]
