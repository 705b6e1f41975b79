"""RULER's haystacks and how needles go into them.

RULER (``scripts/data/synthetic/niah.py``, ``variable_tracking.py``) has three haystacks:

* ``noise``: one sentence repeated, one copy a line; needles are inserted as lines of their own at
  positions drawn uniformly (``insert_lines``);
* ``essay``: the concatenated Paul Graham essays, cut to the first N words (repeated when N is
  larger), split into sentences; needles go after the sentence at ``int(n_sentences * depth / 100)``
  for depths drawn from 40 evenly spaced percentages (``insert_at_depths``);
* ``needle`` (NIAH multi-key 2 and 3): distractor needles instead of filler, placed like ``noise``.

The essays are not available offline; ``corpus_words`` stands in for them with the words of the
experiment's own prepared token files (documents decoded in order), used exactly as RULER uses the
essays' words. RULER splits sentences with NLTK's punkt model, a download; ``split_sentences`` is a
small rule-based splitter (a sentence ends at ``.``, ``!`` or ``?``, maybe followed by a closing
quote or bracket, before whitespace and a capital letter, digit, quote or bracket).
"""

from __future__ import annotations

import random
import re

from longctx.evaluate.registry import EvaluationError

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."

# RULER's insertion depths: 40 evenly spaced percentages from 0 to 100, rounded.
DEPTHS = [int(round(100 * k / 39)) for k in range(40)]

_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text`` (whitespace already normalised to single spaces), none empty."""
    out, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        end = m.start() + len(m.group().rstrip())  # keep closing quotes/brackets with the sentence
        out.append(text[start:end].strip())
        start = m.end()
    out.append(text[start:].strip())
    return [s for s in out if s]


def first_words(words: list[str], n: int) -> str:
    """The first ``n`` words joined by spaces, the word list repeated as often as needed (RULER's
    essay haystack)."""
    if not words:
        raise EvaluationError("ruler: the corpus haystack has no words")
    if n <= len(words):
        return " ".join(words[:n])
    repeats = -(-n // len(words))
    return " ".join((words * repeats)[:n])


def insert_at_depths(text: str, needles: list[str], rng: random.Random) -> str:
    """RULER's essay insertion: ``needles`` (in order) after the sentences at depths drawn without
    replacement from ``DEPTHS``; every piece joined by a single space."""
    if len(needles) > len(DEPTHS):
        raise EvaluationError(f"ruler: {len(needles)} needles, but a text haystack has {len(DEPTHS)} depths")
    sentences = split_sentences(text.strip())
    cuts = [0] + sorted(int(len(sentences) * (d / 100)) for d in rng.sample(DEPTHS, len(needles))) + [len(sentences)]
    pieces = []
    for i in range(1, len(cuts)):
        pieces.append(" ".join(sentences[cuts[i - 1]:cuts[i]]))
        if i - 1 < len(needles):
            pieces.append(needles[i - 1])
    return " ".join(pieces)


def insert_lines(lines: list[str], needles: list[str], rng: random.Random) -> list[str]:
    """RULER's line insertion (NIAH noise and needle haystacks): needle ``k`` goes before the filler
    line at the ``k``-th largest of ``len(needles)`` positions drawn without replacement."""
    if len(needles) > len(lines):
        raise EvaluationError(f"ruler: {len(needles)} needles need at least as many haystack lines, got {len(lines)}")
    out = list(lines)
    positions = sorted(rng.sample(range(len(lines)), len(needles)), reverse=True)
    for position, needle in zip(positions, needles):
        out.insert(position, needle)
    return out


def corpus_words(data_prefix, tokenizer, n_words: int) -> list[str]:
    """Up to ``n_words`` whitespace-separated words of the token files at ``data_prefix``: documents
    decoded in order (BOS/EOS dropped), joined by a space. Fewer when the corpus is shorter; the
    haystack then repeats them, as RULER repeats the essays."""
    from longctx.data import TokenFile

    if data_prefix is None:
        raise EvaluationError("ruler: haystack 'corpus' needs the experiment's token files (data_prefix), and none "
                              "were given; pass data_prefix or set haystack: noise")
    data = TokenFile.open(data_prefix)
    words: list[str] = []
    for i in range(len(data)):
        ids = data.document(i)
        need = n_words - len(words)
        take = 2 * need + 16  # decode a prefix of a long document only, growing it while words are short
        while True:
            doc_words = tokenizer.decode([int(t) for t in ids[:take]], skip_special_tokens=True).split()
            if take >= len(ids):
                break
            doc_words = doc_words[:-1]  # the last word may be cut mid-token
            if len(doc_words) >= need:
                break
            take *= 2
        words.extend(doc_words)
        if len(words) >= n_words:
            return words[:n_words]
    if not words:
        raise EvaluationError(f"ruler: the token files {data_prefix} hold no text for the corpus haystack")
    return words
