"""LongChat-Lines (LongChat's LongEval lines task, extended by Giraffe): retrieve a number by line name.

A prompt lists lines ``line <adjective-noun>: REGISTER_CONTENT is <N>`` and asks for the number on
one of them; an answer is correct when the first integer generated equals ``expected_number``.

Two sources of examples, one format (fields ``expected_number``, ``num_lines``, ``token_size``,
``prompt``):
  * ``hub``: the dataset ``abacusai/LongChat-Lines`` (splits named by line count, 100 .. 1100, 50
    examples each), read with ``datasets.load_dataset``; at evaluation length N the split with the
    most lines whose prompts all fit in N tokens is used.
  * ``generate`` (offline default): the same prompts built here for any token length, as many
    lines as fit in N tokens (Giraffe extended the task this way to about 25k tokens).
Accuracy is reported per evaluation length, with the prompts' mean token count.
"""

from __future__ import annotations

import random
import re
import time

from longctx.evaluate.prompts import answer_prompts, encode_prompt, first_integer, words
from longctx.evaluate.registry import EvaluationError, register

HUB_PATH = "abacusai/LongChat-Lines"
FIELDS = ("expected_number", "num_lines", "token_size", "prompt")

HEADER = ("Below is a record of lines I want you to remember. Each line begins with 'line <line index>' and "
          "contains a '<REGISTER_CONTENT>' at the end of the line as a numerical value. For each line index, "
          "memorize its corresponding <REGISTER_CONTENT>. At the end of the record, I will ask you to retrieve "
          "the corresponding <REGISTER_CONTENT> of a certain line index. Now the record start:\n\n")
LINE = "line {name}: REGISTER_CONTENT is <{number}>\n"
QUESTION = "\nNow the record is over. Tell me what is the <REGISTER_CONTENT> in line {name}? I need the number."
QUERY_LINE = re.compile(r"in line ([^\s?]+)\? I need the number\.")
LINE_NAME = re.compile(r"^line (\S+): REGISTER_CONTENT is <", re.M)

# LongChat draws line names with the `wonderwords` package; a fixed list keeps generation offline
# and reproducible (70 x 70 = 4900 distinct names, enough for about 100k tokens of lines).
ADJECTIVES = """able acid angry aware bitter bold brave brief bright broad busy calm cheap civil clean clear
close cold cool cosmic crisp cruel curly damp dark dear deep dense dry dusty eager early easy empty equal
faint fair false fancy fast fierce firm flat fresh frozen funny gentle giant glad grand great green happy
harsh heavy hidden hollow honest huge humble icy jolly keen kind large late lazy""".split()
NOUNS = """acorn anchor apple arrow badge banjo barn basket beacon bell bison blanket boat bottle bridge
brook bucket cabin camel candle canyon carpet castle cedar cherry cloud comet copper cotton crayon crown
daisy desert dolphin dragon drum eagle ember falcon feather fern fiddle forest fox garden garnet glacier
goose harbor hammer harp hazel helmet heron island ivory jacket jungle kettle kite ladder lantern lemon
lizard""".split()


def line_names(n: int, rng: random.Random) -> list[str]:
    """``n`` distinct adjective-noun line names."""
    capacity = len(ADJECTIVES) * len(NOUNS)
    if n > capacity:
        raise EvaluationError(f"lines: {n} lines asked, but only {capacity} distinct line names exist")
    picks = rng.sample(range(capacity), n)
    return [f"{ADJECTIVES[k // len(NOUNS)]}-{NOUNS[k % len(NOUNS)]}" for k in picks]


def make_example(num_lines: int, rng: random.Random) -> dict:
    """One example in the hub format (``token_size`` filled in by the caller's tokenizer)."""
    names = line_names(num_lines, rng)
    numbers = [rng.randint(0, 50000) for _ in names]
    asked = rng.randrange(num_lines)
    prompt = HEADER + "".join(LINE.format(name=a, number=b) for a, b in zip(names, numbers))
    prompt += QUESTION.format(name=names[asked])
    return {"expected_number": numbers[asked], "num_lines": num_lines, "token_size": None, "prompt": prompt,
            "line": names[asked]}


def is_correct(answer: str, expected_number) -> bool:
    """LongEval's scoring: the first integer of the answer is the expected number."""
    return first_integer(answer) == int(expected_number)


def query_line(prompt: str) -> str:
    """The line name a prompt asks about."""
    m = QUERY_LINE.search(prompt)
    if not m:
        raise EvaluationError("lines: a prompt does not end with the LongChat question ('... in line X? I need the number.')")
    return m.group(1)


def line_depth(prompt: str, line: str) -> float | None:
    """Where the asked line sits among the lines, 0 (first) to 1 (last)."""
    names = LINE_NAME.findall(prompt)
    if line not in names:
        return None
    return names.index(line) / max(len(names) - 1, 1)


def prompt_ids(tokenizer, example: dict, template: str, chat: bool = False) -> list[int]:
    """Token ids of an example's prompt through ``template`` ({prompt}, {line}), maybe as a chat turn."""
    text = template.format(prompt=example["prompt"], line=example.get("line") or query_line(example["prompt"]))
    return encode_prompt(tokenizer, text, chat)


def min_length(max_new_tokens: int = 15, prompt_template: str = "{prompt}\n{line}", **_) -> int:
    """Fewest tokens a one-line prompt and its answer can take (a token a word at least)."""
    one_line = HEADER + LINE.format(name="x", number=1) + QUESTION.format(name="x")
    return words(prompt_template.replace("{prompt}", one_line).replace("{line}", "x")) + max_new_tokens


def lines_that_fit(tokenizer, length: int, template: str, reserve: int, seed: int, chat: bool = False) -> int:
    """The most lines whose rendered prompt fits in ``length - reserve`` tokens (checked on a sample)."""
    budget = length - reserve

    def size(n):
        return len(prompt_ids(tokenizer, make_example(n, random.Random(f"{seed}-fit-{n}")), template, chat))

    if size(1) > budget:
        raise EvaluationError(f"lines: length {length} is too short for a single line ({size(1)} tokens + "
                              f"{reserve} for the answer)")
    lo, hi = 1, 2
    while size(hi) <= budget:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if size(mid) <= budget else (lo, mid)
    return lo


def generate_examples(tokenizer, length: int, n: int, seed: int, template: str = "{prompt}", reserve: int = 0,
                      chat: bool = False) -> list[dict]:
    """``n`` seeded examples of the hub format, each with as many lines as fit in ``length - reserve`` tokens."""
    num_lines = lines_that_fit(tokenizer, length, template, reserve, seed, chat)
    rng = random.Random(f"{seed}-{length}")
    out = []
    for _ in range(n):
        ex = make_example(num_lines, rng)
        # names differ between examples, so a rare one can run a few tokens over: drop a line then
        while len(prompt_ids(tokenizer, ex, template, chat)) > length - reserve and ex["num_lines"] > 1:
            ex = make_example(ex["num_lines"] - 1, rng)
        ex["token_size"] = len(encode_prompt(tokenizer, ex["prompt"]))
        out.append(ex)
    return out


def load_hub(path: str = HUB_PATH, revision=None) -> dict[str, list[dict]]:
    """All splits of the hub dataset (or a local folder in its format) as lists of rows."""
    import datasets

    loaded = datasets.load_dataset(path, revision=revision)
    out = {}
    for split, rows in loaded.items():
        missing = [f for f in FIELDS if f not in rows.column_names]
        if missing:
            raise EvaluationError(f"lines: dataset {path} split {split!r} lacks fields {missing} "
                                  f"(has {rows.column_names})")
        out[split] = [dict(r) for r in rows]
    return out


def hub_examples(tokenizer, length: int, path: str, revision, template: str = "{prompt}", reserve: int = 0,
                 limit=None, chat: bool = False):
    """The split with the most lines whose prompts all fit in ``length - reserve`` tokens, and its name."""
    splits = load_hub(path, revision)
    fitting = []
    for name, rows in splits.items():
        longest = max(len(prompt_ids(tokenizer, r, template, chat)) for r in rows)
        if longest <= length - reserve:
            fitting.append((max(r["num_lines"] for r in rows), name))
    if not fitting:
        raise EvaluationError(f"lines: no split of {path} fits in {length} tokens (splits: {sorted(splits)}); "
                              f"use evaluate.lines.source: generate for short lengths")
    _, name = max(fitting)
    rows = splits[name][:limit] if limit else splits[name]
    return name, rows


@register("lines", order=30, generates=True, min_length=min_length)
def evaluate_lines(model, tokenizer, length: int, *, source="generate", examples=50, seed=1234, max_new_tokens=15,
                   hub_path=HUB_PATH, hub_revision=None, prompt_template="{prompt}", chat_template=False,
                   batch_size=16, batch_tokens=32768, **_):
    started = time.time()
    if source == "generate":
        split, rows = None, generate_examples(tokenizer, length, examples, seed, prompt_template, max_new_tokens,
                                              chat_template)
    elif source == "hub":
        split, rows = hub_examples(tokenizer, length, hub_path, hub_revision, prompt_template, max_new_tokens,
                                   examples, chat_template)
    else:
        raise EvaluationError(f"evaluate.lines.source: unknown source {source!r} (generate or hub)")
    prompts = [prompt_ids(tokenizer, r, prompt_template, chat_template) for r in rows]
    answers = answer_prompts(model, tokenizer, prompts, max_new_tokens, batch_size=batch_size,
                             batch_tokens=batch_tokens)
    results = [{"num_lines": r["num_lines"], "line": (line := r.get("line") or query_line(r["prompt"])),
                "depth": line_depth(r["prompt"], line), "expected_number": int(r["expected_number"]),
                "prompt_tokens": len(ids),
                "token_size": r.get("token_size"), "answer": answer,
                "correct": is_correct(answer, r["expected_number"])}
               for r, ids, answer in zip(rows, prompts, answers)]
    return {
        "eval": "lines",
        "length": length,
        "source": source if source == "generate" else f"{hub_path}:{split}",
        "dataset": "longchat-lines-generated" if source == "generate" else hub_path,
        "num_lines": sorted({r["num_lines"] for r in results}),
        "examples": results,
        "metrics": {
            "accuracy": sum(r["correct"] for r in results) / len(results),
            "prompt_tokens_mean": sum(r["prompt_tokens"] for r in results) / len(results),
        },
        "seconds": time.time() - started,
    }
