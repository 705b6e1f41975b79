"""RULER's 13 tasks: their configurations, prompt templates, answer budgets and sample builders.

From NVIDIA/RULER: the task list and arguments are ``scripts/synthetic.yaml`` and
``scripts/config_tasks.sh``, the templates, answer prefixes and ``tokens_to_generate`` are
``scripts/data/synthetic/constants.py``, and the builders follow ``scripts/data/synthetic/niah.py``,
``variable_tracking.py``, ``common_words_extraction.py`` and ``freq_words_extraction.py`` (QA is in
``ruler/qa.py``). A builder turns a haystack size (lines, words, documents) and a random generator
into one sample ``{"input", "answer_prefix", "outputs", "size"}``; ``ruler/fitting.py`` searches the
size that fills the target length.

RULER draws from the global ``random`` (and ``numpy.random`` for VT's values); here every draw comes
from the ``random.Random`` passed in, for NIAH in RULER's order, so that the same generator state
gives RULER's NIAH text (checked against lm-evaluation-harness's port of RULER's NIAH generator, see
the package docstring). Shuffles that RULER does with a fresh ``random.Random(random_seed)`` are
done the same way with the evaluation's seed.
"""

from __future__ import annotations

import math
import random
import string
import uuid
from dataclasses import dataclass, field

from longctx.evaluate.registry import EvaluationError
from longctx.evaluate.ruler import haystack as hs
from longctx.evaluate.ruler.fitting import largest_size
from longctx.evaluate.ruler.words import KEY_WORDS, PAIR_WORDS, SINGLE_WORDS


@dataclass(frozen=True)
class Task:
    name: str
    family: str  # niah, variable_tracking, common_words_extraction, freq_words_extraction, qa
    args: dict = field(default_factory=dict)


def _niah(haystack, k="words", v="numbers", num_k=1, num_v=1, num_q=1):
    return {"type_haystack": haystack, "type_needle_k": k, "type_needle_v": v, "num_needle_k": num_k,
            "num_needle_v": num_v, "num_needle_q": num_q}


# scripts/synthetic.yaml, in scripts/config_tasks.sh's order
TASKS = {t.name: t for t in [
    Task("niah_single_1", "niah", _niah("noise")),
    Task("niah_single_2", "niah", _niah("essay")),
    Task("niah_single_3", "niah", _niah("essay", v="uuids")),
    Task("niah_multikey_1", "niah", _niah("essay", num_k=4)),
    Task("niah_multikey_2", "niah", _niah("needle")),
    Task("niah_multikey_3", "niah", _niah("needle", k="uuids", v="uuids")),
    Task("niah_multivalue", "niah", _niah("essay", num_v=4)),
    Task("niah_multiquery", "niah", _niah("essay", num_q=4)),
    Task("vt", "variable_tracking", {"type_haystack": "noise", "num_chains": 1, "num_hops": 4}),
    Task("cwe", "common_words_extraction", {"freq_cw": 30, "freq_ucw": 3, "num_cw": 10}),
    Task("fwe", "freq_words_extraction", {"alpha": 2.0}),
    Task("qa_1", "qa", {"dataset": "squad"}),
    Task("qa_2", "qa", {"dataset": "hotpotqa"}),
]}
TASK_NAMES = tuple(TASKS)

# scripts/data/synthetic/constants.py: (template, answer prefix) and tokens_to_generate per family
TEMPLATES = {
    "niah": ("Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize it. "
             "I will quiz you about the {type_needle_v} afterwards.\n{context}\nWhat are all the special magic "
             "{type_needle_v} for {query} mentioned in the provided text?",
             " The special magic {type_needle_v} for {query} mentioned in the provided text are"),
    "variable_tracking": ("Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
                          "{context}\nQuestion: Find all variables that are assigned the value {query} in the text "
                          "above.",
                          " Answer: According to the chain(s) of variable assignment in the text above, {num_v} "
                          "variables are assigned the value {query}, they are: "),
    "common_words_extraction": ("Below is a numbered list of words. In these words, some appear more often than "
                                "others. Memorize the ones that appear most often.\n{context}\nQuestion: What are "
                                "the 10 most common words in the above list?",
                                " Answer: The top 10 words that appear most often in the list are:"),
    "freq_words_extraction": ("Read the following coded text and track the frequency of each coded word. Find the "
                              "three most frequently appeared coded words. {context}\nQuestion: Do not provide any "
                              "explanation. Please ignore the dots '....'. What are the three most frequently "
                              "appeared words in the above coded text?",
                              " Answer: According to the coded text above, the three most frequently appeared words "
                              "are:"),
    "qa": ("Answer the question based on the given documents. Only give me the answer and do not output any other "
           "words.\n\nThe following are given documents.\n\n{context}\n\nAnswer the question based on the given "
           "documents. Only give me the answer and do not output any other words.\n\nQuestion: {query}",
           " Answer:"),
}
TOKENS_TO_GENERATE = {"niah": 128, "variable_tracking": 30, "common_words_extraction": 120,
                      "freq_words_extraction": 50, "qa": 32}
NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."


def max_new_tokens_for(name: str, setting=None) -> int:
    """A task's answer budget: RULER's tokens_to_generate, or the setting (an int for every task, or a
    dict by task name or family overriding some)."""
    family = TASKS[name].family
    if setting is None:
        return TOKENS_TO_GENERATE[family]
    if isinstance(setting, dict):
        return int(setting.get(name, setting.get(family, TOKENS_TO_GENERATE[family])))
    return int(setting)


# --- NIAH (scripts/data/synthetic/niah.py) ---------------------------------------------------------


def random_needle(kind: str, rng: random.Random) -> str:
    """A key or value: a 7-digit number, an adjective-noun word, or a version-4 UUID."""
    if kind == "numbers":
        return str(rng.randint(10 ** 6, 10 ** 7 - 1))
    if kind == "words":
        return rng.choice(KEY_WORDS)
    if kind == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    raise EvaluationError(f"ruler: unknown needle type {kind!r} (numbers, words or uuids)")


def singular_template(template: str) -> str:
    """RULER's rewording when one value is asked for: 'Some ... are' -> 'A ... is'."""
    return template.replace("Some", "A").replace("are all", "is").replace("are", "is").replace("answers", "answer")


class NiahBuilder:
    """One NIAH variant; ``size`` counts filler lines (noise), distractor needles (needle) or words (essay)."""

    def __init__(self, args: dict, seed: int, words: list[str] | None = None):
        self.kind = args["type_haystack"]
        self.k, self.v = args["type_needle_k"], args["type_needle_v"]
        self.num_q, self.num_v = args["num_needle_q"], args["num_needle_v"]
        self.num_k = max(args["num_needle_k"], self.num_q)
        self.seed, self.words = seed, words
        if self.kind == "essay" and not words:
            raise EvaluationError("ruler: a text haystack needs words")

    def min_size(self, index: int = 0) -> int:
        return 1 if self.kind == "essay" else self.num_k * self.num_v

    def build(self, size: int, rng: random.Random, index: int = 0) -> dict:
        keys, values, needles = [], [], []
        for _ in range(self.num_k):
            key = random_needle(self.k, rng)
            while key in keys:  # RULER does not check; a repeated key would make the question ambiguous
                key = random_needle(self.k, rng)
            keys.append(key)
            values.append([])
            for _ in range(self.num_v):
                values[-1].append(random_needle(self.v, rng))
                needles.append(NEEDLE.format(type_needle_v=self.v, key=key, value=values[-1][-1]))
        random.Random(self.seed).shuffle(needles)
        if self.kind == "essay":
            context = hs.insert_at_depths(hs.first_words(self.words, size), needles, rng)
        else:
            if self.kind == "noise":
                lines = [hs.NOISE] * size
            elif self.kind == "needle":
                lines = []
                while len(lines) < size:
                    key = random_needle(self.k, rng)
                    value = random_needle(self.v, rng)
                    if key not in keys:  # RULER does not check: a distractor must not reuse a real key
                        lines.append(NEEDLE.format(type_needle_v=self.v, key=key, value=value))
            else:
                raise EvaluationError(f"ruler: unknown haystack {self.kind!r}")
            context = "\n".join(hs.insert_lines(lines, needles, rng))
        asked = rng.sample(range(self.num_k), self.num_q)
        queries = [keys[i] for i in asked]
        outputs = [a for i in asked for a in values[i]]
        query = ", ".join(queries[:-1]) + ", and " + queries[-1] if len(queries) > 1 else queries[0]
        template, prefix = TEMPLATES["niah"]
        type_v = self.v
        if self.num_q * self.num_v == 1:
            template, prefix, type_v = singular_template(template), singular_template(prefix), self.v[:-1]
        return {"input": template.format(type_needle_v=type_v, context=context, query=query),
                "answer_prefix": prefix.format(type_needle_v=type_v, query=query), "outputs": outputs,
                "size": size, "needles": needles}


# --- variable tracking (scripts/data/synthetic/variable_tracking.py) -------------------------------


def _variables(n: int, letters: int, rng: random.Random) -> list[str]:
    """``n`` distinct variable names of random capitals (never 'VAR')."""
    names: list[str] = []
    while len(names) < n:  # RULER may repeat a name across chains; here all are distinct
        name = "".join(rng.choices(string.ascii_uppercase, k=letters))
        if name not in names and name != "VAR":
            names.append(name)
    return names


def _chains(names: list[list[str]], values: list[int]) -> list[list[str]]:
    return [[f"VAR {v[0]} = {value}"] + [f"VAR {v[j + 1]} = VAR {v[j]} " for j in range(len(v) - 1)]
            for v, value in zip(names, values)]


def _layout(n_noise: int, chain_lengths: list[int], rng: random.Random) -> list:
    """Where chain lines go among ``n_noise`` noise lines: None (noise) or (chain, hop), RULER's insertion."""
    lines: list = [None] * n_noise
    for c, n in enumerate(chain_lengths):
        positions = sorted(rng.sample(range(len(lines)), n))
        for j, p in enumerate(positions):
            lines.insert(p + j, (c, j))
    return lines


def _render_vt(layout: list, chains: list[list[str]], value, num_v: int) -> tuple[str, str]:
    """(task text, answer prefix) of a VT prompt whose lines follow ``layout``."""
    context = "\n".join(hs.NOISE if slot is None else chains[slot[0]][slot[1]] for slot in layout)
    template, prefix = TEMPLATES["variable_tracking"]
    return (template.format(context=context.replace(". \n", ".\n"), query=value),
            prefix.format(query=value, num_v=num_v))


class VariableTrackingBuilder:
    """VT with RULER's one-shot example; ``size`` counts noise lines.

    RULER fits its example (3-letter variables, its own noise lines) to 500 tokens once, and each
    sample gets it with fresh variable names and value at the same places, before the task text.
    Here the example's budget is ``min(500, length // 4)`` tokens (at least its smallest form), so
    that lengths below RULER's 4096 keep room for the question.
    """

    def __init__(self, args: dict, tokenizer, length: int, seed: int):
        self.chains, self.hops = args["num_chains"], args["num_hops"]
        self.icl_hops = min(10, self.hops)
        self.seed = seed
        budget = min(500, length // 4)
        names = [_variables(self.icl_hops + 1, 3, random.Random(f"{seed}-vt-example-names"))] * self.chains

        def fits(n):
            text = self._example_text(self._example_layout(n), names, 12345)
            return len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= budget

        smallest = self.icl_hops + 1
        self.icl_layout = self._example_layout(largest_size(fits, smallest, 4 * length + 16) or smallest)

    def _example_layout(self, n_noise: int) -> list:
        return _layout(n_noise, [self.icl_hops + 1] * self.chains, random.Random(f"{self.seed}-vt-example-layout"))

    @staticmethod
    def _example_text(layout, names, value) -> str:
        text, prefix = _render_vt(layout, _chains(names, [value] * len(names)), value, len(names[0]))
        return text + prefix + " " + " ".join(names[0]) + "\n"

    def min_size(self, index: int = 0) -> int:
        return self.hops + 1

    def build(self, size: int, rng: random.Random, index: int = 0) -> dict:
        flat = _variables(self.chains * (self.hops + 1), 5, rng)
        names = [flat[c * (self.hops + 1):(c + 1) * (self.hops + 1)] for c in range(self.chains)]
        values = [rng.randint(10000, 99998) for _ in range(self.chains)]
        layout = _layout(size, [self.hops + 1] * self.chains, rng)
        icl_names = _variables(self.chains * (self.icl_hops + 1), 3, rng)
        icl_names = [icl_names[c * (self.icl_hops + 1):(c + 1) * (self.icl_hops + 1)] for c in range(self.chains)]
        example = self._example_text(self.icl_layout, icl_names, rng.randint(10000, 99998))
        text, prefix = _render_vt(layout, _chains(names, values), values[0], self.hops + 1)
        return {"input": example + "\n" + text, "answer_prefix": prefix, "outputs": names[0], "size": size,
                "value": values[0]}


# --- common words (scripts/data/synthetic/common_words_extraction.py) ------------------------------


class CommonWordsBuilder:
    """CWE with RULER's one-shot example; ``size`` counts distinct words. Below 4096 tokens RULER uses
    3/1 repeats in the example and 6/1 in the question, else 10/3 and ``freq_cw``/``freq_ucw``.

    RULER samples the question's words from its word list while it has enough, else from a larger
    list. Here the choice is made once per length, so that token counts grow with the size: when
    the whole single-word list fits (``fits``, a sample -> bool) and would leave the prompt short of
    the length, every sample at this length draws adjective-noun pairs instead (more tokens a word,
    so fewer distinct words, as many as fill the length).
    """

    def __init__(self, args: dict, length: int, seed: int, fits=None):
        self.num_cw, self.seed = args["num_cw"], seed
        self.words = list(SINGLE_WORDS)
        random.Random(seed).shuffle(self.words)
        short = length < 4096
        self.example_shape = (20, 3, 1) if short else (40, 10, 3)
        self.repeats = (6, 1) if short else (args["freq_cw"], args["freq_ucw"])
        self.num_fewshot = 1
        self.pool = self.words
        if fits is not None and fits(self.build(len(self.words), random.Random(f"{seed}-cwe-pool"))):
            self.pool = PAIR_WORDS
        self.max_size = len(self.pool)

    def min_size(self, index: int = 0) -> int:
        return self.num_cw

    def _example(self, pool: list[str], num_words: int, common: int, uncommon: int, rng: random.Random):
        chosen = rng.sample(pool, num_words)
        listed = chosen[:self.num_cw] * common + chosen[self.num_cw:] * uncommon
        random.Random(self.seed).shuffle(listed)
        return " ".join(f"{i + 1}. {w}" for i, w in enumerate(listed)), chosen[:self.num_cw]

    def build(self, size: int, rng: random.Random, index: int = 0) -> dict:
        template, prefix = TEMPLATES["common_words_extraction"]
        shots = []
        for _ in range(self.num_fewshot):
            context, answer = self._example(self.words, *self.example_shape, rng)
            shots.append(template.format(context=context, query="") + prefix + " "
                         + " ".join(f"{i + 1}. {w}" for i, w in enumerate(answer)))
        context, answer = self._example(self.pool, size, *self.repeats, rng)
        return {"input": "\n".join(shots) + "\n" + template.format(context=context, query=""),
                "answer_prefix": prefix, "outputs": answer, "size": size}


# --- frequent words (scripts/data/synthetic/freq_words_extraction.py) ------------------------------


def zeta(s: float, terms: int = 1000) -> float:
    """Riemann zeta for s > 1 (Euler-Maclaurin; RULER uses scipy.special.zeta)."""
    if s <= 1:
        raise EvaluationError(f"ruler fwe: alpha must be > 1, got {s}")
    n = terms
    return (sum(k ** -s for k in range(1, n)) + n ** (1 - s) / (s - 1) + n ** -s / 2
            + s * n ** (-s - 1) / 12 - s * (s + 1) * (s + 2) * n ** (-s - 3) / 720)


def fwe_counts(num_words: int, vocab_size: int, alpha: float) -> list[int]:
    """How often each vocabulary rank occurs: floor(num_words * k^-alpha / zeta(alpha)), k = 1.."""
    z = zeta(alpha)
    return [int(num_words * k ** -alpha / z) for k in range(1, vocab_size + 1)]


class FrequentWordsBuilder:
    """FWE: random 6-letter coded words with Zipf counts, the top rank replaced by '...' (noise); the
    answer is ranks 2-4. ``size`` is RULER's ``num_words``; the vocabulary has (length - budget) // 50
    words as in RULER, but at least 4 so that three answers exist at short lengths."""

    def __init__(self, args: dict, length: int, budget: int, seed: int, word_length: int = 6):
        self.alpha, self.seed, self.word_length = args["alpha"], seed, word_length
        self.vocab_size = max(4, (length - budget) // 50)
        # smallest num_words with three answers, each more frequent than every other coded word
        z = zeta(self.alpha)
        gap = (4 ** -self.alpha - (5 ** -self.alpha if self.vocab_size > 4 else 0)) / z
        n = math.ceil(1 / gap) + 1
        while n > 1 and self._distinct(n - 1):
            n -= 1
        self._min = n

    def _distinct(self, n: int) -> bool:
        counts = fwe_counts(n, self.vocab_size, self.alpha)
        rest = max(counts[4:], default=0)
        return min(counts[1:4]) >= 1 and counts[3] > rest

    def min_size(self, index: int = 0) -> int:
        return self._min

    def build(self, size: int, rng: random.Random, index: int = 0) -> dict:
        vocab = ["".join(rng.choices(string.ascii_lowercase, k=self.word_length)) for _ in range(self.vocab_size)]
        while len(set(vocab)) < self.vocab_size:
            vocab.append("".join(rng.choices(string.ascii_lowercase, k=self.word_length)))
        vocab = sorted(set(vocab))
        random.Random(self.seed).shuffle(vocab)
        vocab[0] = "..."
        sampled = [w for w, c in zip(vocab, fwe_counts(size, self.vocab_size, self.alpha)) for _ in range(c)]
        random.Random(self.seed).shuffle(sampled)
        template, prefix = TEMPLATES["freq_words_extraction"]
        return {"input": template.format(context=" ".join(sampled), query=""), "answer_prefix": prefix,
                "outputs": vocab[1:4], "size": size}
