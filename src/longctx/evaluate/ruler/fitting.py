"""Fitting RULER samples to a length in the model's own tokens.

RULER's generators (``scripts/data/synthetic/niah.py`` and the others) binary-search the haystack
size so that the prompt's tokens plus the task's ``tokens_to_generate`` fit ``max_seq_length``,
then build every sample at that size, stepping the size down by a fixed increment for a sample that
comes out too long. Here:

* the tokens counted are the model's whole input (``prompt_ids``): BOS and the chat template
  included (RULER counts ``tokenizer.tokenize(text)``, without special tokens), so a prompt and its
  answer budget never exceed the length;
* the common size is searched on fixed-seed draws (``{seed}-{task}-{length}-fit``) and the samples
  come from their own generator (``{seed}-{task}-{length}``), so they do not depend on the search
  path: the same seed, task and length give the same samples for every model;
* each sample then takes the largest haystack that fits with its own draws (from the common size,
  stepping by what its slack or overflow takes, then bisecting), where RULER keeps the common size
  and steps a sample that comes out too long down by a fixed increment (500 essay words, 25 or 5
  lines, 10 words or documents); every sample so ends within one haystack unit of the length;
* a length too short for a task's smallest sample is an ``EvaluationError`` (RULER falls back to
  its smallest size and can loop forever).
"""

from __future__ import annotations

import math
import random

from longctx.evaluate.prompts import encode, encode_prompt
from longctx.evaluate.registry import EvaluationError


def prompt_ids(tokenizer, sample: dict, chat: bool = False) -> list[int]:
    """The model's input for a sample: RULER's base template (the prompt and its answer prefix as one
    text, with the tokenizer's start tokens), or with ``chat`` the prompt as a user turn of the
    tokenizer's chat template followed by the answer prefix, as RULER appends the answer prefix
    after its chat templates (``scripts/data/prepare.py``)."""
    if not chat:
        return encode(tokenizer, sample["input"] + sample["answer_prefix"])
    try:
        ids = encode_prompt(tokenizer, sample["input"], chat=True)
    except ValueError as e:
        raise EvaluationError(f"ruler: {e}") from None
    return ids + list(tokenizer(sample["answer_prefix"], add_special_tokens=False)["input_ids"])


def largest_size(fits, lo: int, cap: int) -> int | None:
    """The largest size >= ``lo`` for which ``fits(size)`` holds, assuming it holds up to some size
    and not beyond (doubling, then bisection); None when ``lo`` does not fit. ``cap`` bounds the
    doubling: a size past it raises (a tokenizer that gives fewer tokens than units)."""
    if not fits(lo):
        return None
    good, bad = lo, max(2 * lo, lo + 1)
    while fits(bad):
        good, bad = bad, 2 * bad
        if good > cap:
            raise EvaluationError(f"ruler: {good} haystack units still fit; the tokenizer gives fewer tokens than "
                                  f"units and the search cannot end")
    while bad - good > 1:
        mid = (good + bad) // 2
        good, bad = (mid, bad) if fits(mid) else (good, mid)
    return good


def generate_samples(name: str, builder, tokenizer, length: int, n: int, seed: int, budget: int,
                     chat: bool = False) -> list[dict]:
    """``n`` samples of task ``name`` whose input plus ``budget`` answer tokens fit ``length`` tokens,
    each with the largest haystack that fits for its own draws."""
    room = length - budget
    if room <= 0:
        raise EvaluationError(f"ruler {name}: length {length} leaves no room for a prompt next to the "
                              f"{budget} answer tokens")
    cap = 4 * length + 16

    def builds(state, index: int):
        """A sample's builds by size, all from the same generator state (cached)."""
        cache: dict[int, tuple[dict, int, tuple]] = {}

        def at(size: int):
            if size not in cache:
                rng = random.Random()
                rng.setstate(state)
                sample = builder.build(size, rng, index)
                cache[size] = (sample, len(prompt_ids(tokenizer, sample, chat)), rng.getstate())
            return cache[size]
        return at

    limit = getattr(builder, "max_size", None)  # the most units a builder has (CWE's word list)
    if limit is not None:
        cap = min(cap, limit + 1)

    # the common size: RULER's search, on the fixed-seed probe draws
    probe = builds(random.Random(f"{seed}-{name}-{length}-fit").getstate(), 0)
    lo = builder.min_size(0)
    size = largest_size(lambda s: (limit is None or s <= limit) and probe(s)[1] <= room, lo, cap)
    if size is None:
        raise EvaluationError(f"ruler {name}: length {length} is too short for the task's template: its smallest "
                              f"prompt takes {probe(lo)[1]} tokens, and {budget} more are kept for the answer")
    if size == limit:
        raise EvaluationError(f"ruler {name}: all {limit} words of the offline word list fit in length {length}; "
                              f"longer lengths need a larger list than this module has")
    above = probe(size + 1)[1] if size + 1 <= min(cap, limit or cap) else probe(size)[1] + 1
    per_unit = max(above - probe(size)[1], 1e-3)

    rng = random.Random(f"{seed}-{name}-{length}")
    out = []
    for index in range(n):
        at = builds(rng.getstate(), index)
        smallest = builder.min_size(index)

        def fits(s):
            return (limit is None or s <= limit) and at(s)[1] <= room

        start = max(size, smallest)
        if fits(start):  # grow from the common size while this sample's draws still fit
            good, step = start, max(1, int((room - at(start)[1]) / per_unit))
            while fits(good + step):
                good, step = good + step, 2 * step
                if good > cap:
                    raise EvaluationError(f"ruler {name}: {good} haystack units still fit; the tokenizer gives "
                                          f"fewer tokens than units and the search cannot end")
            bad = good + step
        else:  # shrink by what the overflow takes, then bisect
            bad, step = start, max(1, math.ceil((at(start)[1] - room) / per_unit))
            while True:
                candidate = max(smallest, bad - step)
                if fits(candidate):
                    good = candidate
                    break
                if candidate == smallest:
                    raise EvaluationError(f"ruler {name}: sample {index} takes {at(candidate)[1]} tokens at its "
                                          f"smallest haystack; length {length} is too short for it next to "
                                          f"{budget} answer tokens")
                bad, step = candidate, 2 * step
        while bad - good > 1:
            mid = (good + bad) // 2
            good, bad = (mid, bad) if fits(mid) else (good, mid)
        sample, tokens, after = at(good)
        rng.setstate(after)
        sample.update(task=name, index=index, prompt_tokens=tokens)
        out.append(sample)
    return out
