"""RULER: each task's generator (needles and answers where RULER puts them, lengths fitted in the
tokenizer's tokens, seeded), QA from local files, the scorers, the effective length, chat prompts,
the registered evaluation end to end, and the comparison with lm-evaluation-harness's ruler tasks."""

import json
import math
import random
import re
import sys
import types
from collections import Counter

import numpy as np
import pytest

from longctx.data import load_tokenizer, prepare_split
from longctx.evaluate.prompts import encode
from longctx.evaluate.registry import EVALUATIONS, EvaluationError
from longctx.evaluate.ruler import (TASK_NAMES, TASKS, effective_length, generate_task, min_length, string_match_all,
                                    string_match_part)
from longctx.evaluate.ruler import haystack as hs
from longctx.evaluate.ruler import tasks as tasks_module
from longctx.evaluate.ruler.fitting import prompt_ids
from longctx.evaluate.ruler.scoring import postprocess
from longctx.evaluate.ruler.tasks import TEMPLATES, NiahBuilder, max_new_tokens_for, zeta
from longctx.evaluate.ruler.words import ADJECTIVES, KEY_WORDS, NOUNS, VERBS

from conftest import AUSTEN, tiny_llama

SYNTHETIC = [t for t in TASK_NAMES if not t.startswith("qa")]
NIAH = [t for t in TASK_NAMES if t.startswith("niah")]
NEEDLE_RE = re.compile(r"One of the special magic (numbers|uuids) for (\S+) is: (\S+)\.")
VALUE_RE = {"numbers": r"\d{7}", "uuids": r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"}
LENGTH = 1280  # every synthetic task fits at this length with the small test tokenizer


@pytest.fixture(scope="module")
def tok(austen_tokenizer):
    return load_tokenizer(austen_tokenizer)


@pytest.fixture(scope="module")
def corpus_prefix(tmp_path_factory, austen_tokenizer):
    """Token files of three Persuasion passages (the corpus haystack's source)."""
    root = tmp_path_factory.mktemp("ruler-docs")
    text = (AUSTEN / "persuasion.txt").read_text()[30000:]
    names = []
    for k in range(3):
        (root / f"doc{k}.txt").write_text(text[k * 6000:(k + 1) * 6000])
        names.append(f"doc{k}.txt")
    corpus = {"source": "local", "root": str(root), "documents": "file", "splits": {"test": names},
              "hub_path": None, "hub_name": None, "hub_revision": None, "text_field": "text",
              "max_tokens": None, "max_documents": None}
    prefix = tmp_path_factory.mktemp("ruler-tokens") / "test"
    prepare_split(corpus, "test", austen_tokenizer, prefix)
    return prefix


@pytest.fixture(scope="module")
def corpus(corpus_prefix, tok):
    return hs.corpus_words(corpus_prefix, tok, LENGTH + 1)


@pytest.fixture(scope="module")
def qa_files(tmp_path_factory):
    """A small SQuAD 2.0 file (3 articles, 10 paragraphs, one unanswerable question) and HotpotQA file."""
    root = tmp_path_factory.mktemp("qa")
    filler = "It stood near the old mill by the river, and people came from far away to see it in summer."
    articles = []
    for a, n_par in enumerate((3, 3, 4)):
        paragraphs = []
        for p in range(n_par):
            town = f"Town{a}{p}"
            paragraphs.append({"context": f"Paragraph {a}-{p}. The bell of {town} was cast in 17{a}{p}. {filler}",
                               "qas": [{"question": f"When was the bell of {town} cast?",
                                        "answers": [{"text": f"17{a}{p}"}, {"text": f"in 17{a}{p}"}],
                                        "is_impossible": False}]})
        articles.append({"title": f"article{a}", "paragraphs": paragraphs})
    articles[0]["paragraphs"][1]["qas"].insert(0, {"question": "Who rang it?", "answers": [], "is_impossible": True})
    squad = root / "squad.json"
    squad.write_text(json.dumps({"version": "v2.0", "data": articles}))
    hotpot = []
    for q in range(3):
        context = [[f"Title {q}-{c}", [f"Sentence one of {q}-{c}. ", f"{filler}"]] for c in range(3)]
        hotpot.append({"question": f"Which title comes first in group {q}?", "answer": f"Title {q}-0",
                       "context": context})
    path = root / "hotpot.json"
    path.write_text(json.dumps(hotpot))
    return {"qa_squad_path": str(squad), "qa_hotpot_path": str(path)}


def check_fitted(samples, tok, length, budget, tolerance, chat=False):
    """Each prompt plus its answer budget fits the length, within ``tolerance`` tokens of it."""
    for s in samples:
        assert s["prompt_tokens"] == len(prompt_ids(tok, s, chat))
        if not chat:  # RULER's base template: the prompt and its answer prefix, one text
            assert prompt_ids(tok, s) == encode(tok, s["input"] + s["answer_prefix"])
        assert length - tolerance < s["prompt_tokens"] + budget <= length, (s["task"], s["prompt_tokens"])


# --- task table ---------------------------------------------------------------------------------


def test_task_table_is_rulers():
    assert TASK_NAMES == ("niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multikey_2",
                          "niah_multikey_3", "niah_multivalue", "niah_multiquery", "vt", "cwe", "fwe", "qa_1", "qa_2")
    shape = {n: (a["type_haystack"], a["type_needle_k"], a["type_needle_v"], a["num_needle_k"], a["num_needle_v"],
                 a["num_needle_q"]) for n in NIAH for a in [TASKS[n].args]}
    assert shape == {"niah_single_1": ("noise", "words", "numbers", 1, 1, 1),
                     "niah_single_2": ("essay", "words", "numbers", 1, 1, 1),
                     "niah_single_3": ("essay", "words", "uuids", 1, 1, 1),
                     "niah_multikey_1": ("essay", "words", "numbers", 4, 1, 1),
                     "niah_multikey_2": ("needle", "words", "numbers", 1, 1, 1),
                     "niah_multikey_3": ("needle", "uuids", "uuids", 1, 1, 1),
                     "niah_multivalue": ("essay", "words", "numbers", 1, 4, 1),
                     "niah_multiquery": ("essay", "words", "numbers", 1, 1, 4)}
    assert [max_new_tokens_for(n) for n in TASK_NAMES] == [128] * 8 + [30, 120, 50, 32, 32]
    assert max_new_tokens_for("vt", 7) == 7 and max_new_tokens_for("cwe", {"cwe": 9, "niah": 3}) == 9
    assert max_new_tokens_for("niah_multikey_2", {"niah": 3}) == 3 and max_new_tokens_for("fwe", {"niah": 3}) == 50
    assert {n: TASKS[n].args for n in ("vt", "cwe", "fwe", "qa_1", "qa_2")} == {
        "vt": {"type_haystack": "noise", "num_chains": 1, "num_hops": 4},
        "cwe": {"freq_cw": 30, "freq_ucw": 3, "num_cw": 10}, "fwe": {"alpha": 2.0},
        "qa_1": {"dataset": "squad"}, "qa_2": {"dataset": "hotpotqa"}}
    assert hs.DEPTHS == [int(x) for x in np.round(np.linspace(0, 100, 40))]
    assert len(KEY_WORDS) == len(ADJECTIVES) * len(NOUNS) and KEY_WORDS == sorted(KEY_WORDS)
    single = tasks_module.SINGLE_WORDS  # CWE's words: none inside another (substring scoring)
    assert len(single) > 750 and not any(a != b and a in b for a in single for b in single)
    assert set(single) <= set(ADJECTIVES + NOUNS + VERBS)


# --- NIAH ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NIAH)
def test_niah_needles_answers_and_length(tok, corpus, name):
    args = TASKS[name].args
    samples = generate_task(name, tok, 768, samples=3, seed=5, corpus=corpus)
    num_k = max(args["num_needle_k"], args["num_needle_q"])
    one = args["num_needle_q"] * args["num_needle_v"] == 1
    for s in samples:
        found = NEEDLE_RE.findall(s["input"])
        real = [(k, v) for _, k, v in found if any(v == o for o in s["outputs"])] if args["type_haystack"] == "needle" \
            else [(k, v) for _, k, v in found]
        if args["type_haystack"] != "needle":
            assert len(found) == num_k * args["num_needle_v"]  # every needle once, nothing else needle-like
        else:
            assert len(found) == num_k * args["num_needle_v"] + s["size"]  # distractor needles are the haystack
            assert len({k for _, k, _ in found}) == len(found)  # no distractor reuses the real key
        assert all(t == args["type_needle_v"] for t, _, _ in found)
        # the answers are the values of the asked keys, each in the text exactly once
        question = s["input"].rsplit("\n", 1)[1]
        asked = re.split(r", and |, ", re.fullmatch(r"What (?:is|are all) the special magic \w+ for (.+) mentioned "
                                                    r"in the provided text\?", question).group(1))
        assert len(asked) == args["num_needle_q"] and set(asked) <= {k for k, _ in real}
        assert sorted(v for k, v in real if k in asked) == sorted(s["outputs"])
        assert len(s["outputs"]) == args["num_needle_q"] * args["num_needle_v"]
        for value in s["outputs"]:
            assert s["input"].count(value) == 1
            assert re.fullmatch(VALUE_RE[args["type_needle_v"]], value)
        # RULER's wording: singular when one value is asked for
        if one:
            kind = args["type_needle_v"][:-1]
            assert s["input"].startswith(f"A special magic {kind} is hidden")
            assert s["answer_prefix"] == f" The special magic {kind} for {asked[0]} mentioned in the provided text is"
        else:
            assert s["input"].startswith(f"Some special magic {args['type_needle_v']} are hidden")
            assert s["answer_prefix"].endswith(" mentioned in the provided text are")
        if args["num_needle_q"] > 1:
            assert ", and " in question
    # haystack: noise lines, distractor needles, or the corpus's words in order
    s = samples[0]
    body = s["input"].split("\n")[1:-1]
    if args["type_haystack"] == "noise":
        assert Counter(body) == Counter({hs.NOISE: s["size"], NEEDLE_RE.search(s["input"]).group(0): 1})
    elif args["type_haystack"] == "essay":
        assert len(body) == 1
        text = body[0]
        for needle in s["needles"]:
            assert text.count(needle) == 1
            text = text.replace(needle, " ")
        assert text.split() == corpus[:s["size"]]
    # within one haystack unit of the length: a noise line, a distractor needle, a word
    unit = {"noise": 50, "needle": 80, "essay": 20}[args["type_haystack"]]
    unit += 40 if args["type_needle_k"] == "uuids" else 0
    check_fitted(samples, tok, 768, 128, unit)
    assert generate_task(name, tok, 768, samples=3, seed=5, corpus=corpus) == samples  # seeded
    assert generate_task(name, tok, 768, samples=3, seed=6, corpus=corpus) != samples


def test_needle_order_and_insertion_follow_ruler():
    # line insertion: needles before the lines at positions drawn in RULER's way
    rng, copy = random.Random(3), random.Random(3)
    out = hs.insert_lines(["x"] * 10, ["A", "B", "C"], rng)
    positions = sorted(copy.sample(range(10), 3), reverse=True)
    expected = ["x"] * 10
    for p, n in zip(positions, ["A", "B", "C"]):
        expected.insert(p, n)
    assert out == expected
    # depth insertion: after sentence int(n * depth / 100), depths from RULER's 40
    text = " ".join(f"Sentence {i} ends here." for i in range(50))
    rng, copy = random.Random(4), random.Random(4)
    out = hs.insert_at_depths(text, ["N1.", "N2."], rng)
    c1, c2 = sorted(int(50 * d / 100) for d in copy.sample(hs.DEPTHS, 2))
    sents = hs.split_sentences(text)
    assert len(sents) == 50
    assert out == " ".join([" ".join(sents[:c1]), "N1.", " ".join(sents[c1:c2]), "N2.", " ".join(sents[c2:])])
    assert hs.split_sentences('He said "Go." Then 3 left! Why? ok. (Yes.) No') == \
        ['He said "Go."', "Then 3 left!", "Why? ok.", "(Yes.)", "No"]
    assert hs.first_words(["a", "b", "c"], 7) == "a b c a b c a"
    with pytest.raises(EvaluationError, match="needs the experiment's token files"):
        hs.corpus_words(None, None, 10)


def test_corpus_words_come_from_the_token_files(corpus_prefix, tok):
    text = (AUSTEN / "persuasion.txt").read_text()[30000:]
    words = [w for k in range(3) for w in text[k * 6000:(k + 1) * 6000].split()]
    assert hs.corpus_words(corpus_prefix, tok, 700) == words[:700]  # documents in order, decoded
    assert hs.corpus_words(corpus_prefix, tok, 10 ** 6) == words  # all there is; the haystack repeats it


def test_noise_haystack_replaces_the_essay(tok):
    s = generate_task("niah_single_2", tok, 768, samples=1, seed=5, haystack="noise")[0]
    assert hs.NOISE in s["input"] and s["input"].count(hs.NOISE) == s["size"]
    with pytest.raises(EvaluationError, match="haystack must be one of"):
        generate_task("niah_single_2", tok, 768, haystack="essay")


# --- VT, CWE, FWE -------------------------------------------------------------------------------


def assigned(text: str, value: str) -> list[str]:
    """Variables that get ``value`` by following the VAR lines of ``text``."""
    got, lines = [], re.findall(r"^VAR (\w+) = (VAR (\w+)|\d+) ?$", text, re.M)
    frontier = [v for v, rhs, _ in lines if rhs == value]
    while frontier:
        got += frontier
        frontier = [v for v, _, src in lines if src in frontier]
    return got


def test_vt_chain_and_one_shot_example(tok):
    samples = generate_task("vt", tok, LENGTH, samples=3, seed=2)
    for s in samples:
        example, task = s["input"].split("\n\nMemorize and track", 1)
        assert example.startswith("Memorize and track") and task.count("VAR") == 5 + 4
        value = str(s["value"])
        assert assigned(task, value) == s["outputs"] and all(re.fullmatch("[A-Z]{5}", v) for v in s["outputs"])
        assert task.endswith(f"assigned the value {value} in the text above.")
        assert s["answer_prefix"] == (" Answer: According to the chain(s) of variable assignment in the text above, "
                                      f"5 variables are assigned the value {value}, they are: ")
        # the example is answered: its own chain's 3-letter variables follow its answer prefix
        ex_value = re.search(r"assigned the value (\d+), they are: (.*)$", example)
        assert assigned(example, ex_value.group(1)) == ex_value.group(2).split()
        assert task.count(hs.NOISE) == s["size"]
    check_fitted(samples, tok, LENGTH, 30, 50)
    # the example keeps its places and changes its names and value between samples
    examples = [s["input"].split("\n\nMemorize")[0] for s in samples]
    assert len(set(examples)) == 3 and len({re.sub(r"[A-Z]{3}|\d{5}", "#", e) for e in examples}) == 1


def test_cwe_counts_and_example(tok):
    samples = generate_task("cwe", tok, LENGTH, samples=2, seed=2)
    for s in samples:
        shot, task = s["input"].split("\nBelow is a numbered list", 1)
        listed = re.findall(r"(\d+)\. (\S+)", task.split("\n")[1])
        assert [int(i) for i, _ in listed] == list(range(1, len(listed) + 1))
        counts = Counter(w for _, w in listed)
        # below 4096 tokens RULER repeats the 10 common words 6 times, the others once
        assert {w: counts[w] for w in s["outputs"]} == {w: 6 for w in s["outputs"]}
        assert len(counts) == s["size"] and set(counts.values()) == {6, 1}
        shot_words = Counter(re.findall(r"\d+\. (\S+)", shot.split("\n")[1]))
        shot_answer = re.findall(r"\d+\. (\S+)", shot.split("are:")[1])
        assert len(shot_answer) == 10 and all(shot_words[w] == 3 for w in shot_answer) and len(shot_words) == 20
        assert s["answer_prefix"] == TEMPLATES["common_words_extraction"][1]
    check_fitted(samples, tok, LENGTH, 120, 40)


def test_cwe_long_form_and_word_list_fallback(tok, monkeypatch):
    """From 4096 tokens RULER repeats the common words 30 times and the others 3; when the whole
    single-word list fits a length, every sample draws adjective-noun pairs (longer in tokens)."""
    samples = generate_task("cwe", tok, 32768, samples=2, seed=2)
    for s in samples:
        counts = Counter(re.findall(r"\d+\. (\S+)", s["input"].split("\n")[-2]))
        assert {w: counts[w] for w in s["outputs"]} == {w: 30 for w in s["outputs"]}
        assert set(counts.values()) == {30, 3} and len(counts) == s["size"]
        assert all(re.fullmatch(r"[a-z]+-[a-z]+", w) for w in counts)
    check_fitted(samples, tok, 32768, 120, 60)
    # the single words alone would leave the prompt short of the length
    single = tasks_module.CommonWordsBuilder(TASKS["cwe"].args, 32768, 2).build(
        len(tasks_module.SINGLE_WORDS), random.Random(0))
    assert len(prompt_ids(tok, single)) + 120 < 32768 - 60
    monkeypatch.setattr(tasks_module, "PAIR_WORDS", tasks_module.PAIR_WORDS[:300])
    with pytest.raises(EvaluationError, match="all 300 words of the offline word list fit"):
        generate_task("cwe", tok, 32768, samples=1, seed=2)


def test_fwe_top_three_are_the_answer(tok):
    samples = generate_task("fwe", tok, 768, samples=3, seed=2)
    for s in samples:
        coded = s["input"].split("coded words. ", 1)[1].split("\nQuestion:")[0].split()
        counts = Counter(coded)
        assert counts.most_common(1)[0][0] == "..."
        top = [w for w, _ in counts.most_common() if w != "..."]
        assert set(top[:3]) == set(s["outputs"]) and counts[top[2]] > max((counts[w] for w in top[3:]), default=0)
        assert all(re.fullmatch("[a-z]{6}", w) for w in s["outputs"])
    check_fitted(samples, tok, 768, 50, 30)
    assert abs(zeta(2.0) - math.pi ** 2 / 6) < 1e-12 and abs(zeta(4.0) - math.pi ** 4 / 90) < 1e-12
    scipy_special = pytest.importorskip("scipy.special")  # RULER's zeta
    assert abs(zeta(1.5) - scipy_special.zeta(1.5)) < 1e-9


# --- QA -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [400, 640])  # 2 documents (gold + a sibling), 5 (all siblings + others)
def test_squad_documents_and_questions(tok, qa_files, length):
    samples = generate_task("qa_1", tok, length, samples=4, seed=1, **qa_files)
    data = json.loads(open(qa_files["qa_squad_path"]).read())["data"]
    towns = ["Town00", "Town01", "Town02", "Town10"]  # file order; the unanswerable question is left out
    for s, town in zip(samples, towns):
        assert s["input"].endswith(f"Question: When was the bell of {town} cast?")
        assert s["outputs"] == [f"17{town[-2:]}", f"in 17{town[-2:]}"] and s["answer_prefix"] == " Answer:"
        numbers = [int(n) for n in re.findall(r"^Document (\d+):$", s["input"], re.M)]
        assert numbers == list(range(1, s["size"] + 1))
        gold = s["gold_documents"][0]
        assert s["input"].count(gold) == 1 and f"bell of {town} was" in gold
        # distractors: the article's other paragraphs first
        article = next(a for a in data if any(p["context"] == gold for p in a["paragraphs"]))
        siblings = [p["context"] for p in article["paragraphs"] if p["context"] != gold]
        present = [p for p in siblings if p in s["input"]]
        assert len(present) == min(len(siblings), s["size"] - 1) and s["size"] == {400: 2, 640: 5}[length]
    check_fitted(samples, tok, length, 32, 150)
    with pytest.raises(EvaluationError, match="does not exist"):
        generate_task("qa_1", tok, 640, qa_squad_path="/nonexistent/squad.json")
    with pytest.raises(EvaluationError, match="no local QA file"):
        generate_task("qa_1", tok, 640)
    with pytest.raises(EvaluationError, match="has 10 answerable questions"):
        generate_task("qa_1", tok, 640, samples=11, **qa_files)


def test_hotpotqa_documents(tok, qa_files, tmp_path):
    samples = generate_task("qa_2", tok, 768, samples=3, seed=1, **qa_files)
    for q, s in enumerate(samples):
        assert f"group {q}?" in s["input"] and s["outputs"] == [f"Title {q}-0"]
        for c in range(3):  # all the question's own paragraphs, as "title\nsentences"
            assert s["input"].count(f"Title {q}-{c}\nSentence one of {q}-{c}. ") == 1
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"question": "q"}]))
    with pytest.raises(EvaluationError, match="not in HotpotQA's format"):
        generate_task("qa_2", tok, 768, qa_hotpot_path=str(bad))


# --- lengths, seeds, chat -----------------------------------------------------------------------


def test_lengths_too_short_are_errors_and_min_length_is_a_lower_bound(tok):
    with pytest.raises(EvaluationError, match="too short for the task's template"):
        generate_task("niah_single_1", tok, 256)
    with pytest.raises(EvaluationError, match="leaves no room"):
        generate_task("niah_single_1", tok, 128)
    with pytest.raises(EvaluationError, match="unknown tasks"):
        generate_task("niah_single_4", tok, 768)
    assert min_length() == max(min_length(tasks=[t]) for t in SYNTHETIC)
    assert min_length(qa_squad_path="x") == min_length()  # QA's template is shorter than CWE's two
    for name in ("niah_single_1", "vt", "cwe", "fwe"):
        bound = min_length(tasks=[name])
        with pytest.raises(EvaluationError):
            generate_task(name, tok, bound - 1, haystack="noise")
        assert bound <= LENGTH


def test_chat_template_wraps_the_prompt(austen_tokenizer):
    tok = load_tokenizer(austen_tokenizer)
    with pytest.raises(EvaluationError, match="no chat template"):
        generate_task("niah_single_1", tok, 768, chat_template=True)
    tok.chat_template = ("{% for m in messages %}<|user|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
    samples = generate_task("niah_single_1", tok, 768, samples=2, seed=1, chat_template=True)
    for s in samples:
        wrapped = f"<|user|>\n{s['input']}<|end|>\n<|assistant|>\n"
        ids = [tok(text, add_special_tokens=False)["input_ids"] for text in (wrapped, s["answer_prefix"])]
        assert prompt_ids(tok, s, chat=True) == ids[0] + ids[1]
    check_fitted(samples, tok, 768, 128, 50, chat=True)


# --- scoring ------------------------------------------------------------------------------------


def test_scorers_by_hand():
    refs = [["1234567"], ["apple", "pear", "plum", "fig"]]
    assert string_match_all(["It is 1234567.", "APPLE, pear, plum and fig"], refs) == 100.0
    assert string_match_all(["It is 1234567.", "apple and pear"], refs) == 75.0  # (1 + 2/4) / 2
    assert string_match_all(["7654321", "none"], refs) == 0.0
    assert string_match_all(["a", "b", "c"], [["a"], ["x"], ["x"]]) == 33.33  # rounded as RULER rounds
    # QA: any of the references gives full credit
    assert string_match_part(["in 1750", "Paris"], [["1750", "in 1750"], ["London"]]) == 50.0
    assert string_match_part(["the Title 0-0"], [["title 0-0", "other"]]) == 100.0
    assert string_match_part(["no"], [["yes"]]) == 0.0
    assert postprocess("  \x01 answer\x02two\n ") == "answer\ntwo"
    with pytest.raises(ValueError):
        string_match_all(["a"], [[]])
    with pytest.raises(ValueError):
        string_match_part([], [])


def test_effective_length_by_hand():
    assert effective_length({4096: 95.0, 8192: 90.1, 16384: 85.6, 32768: 80.0}) == 16384  # 85.6 passes
    assert effective_length({32768: 80.0, 4096: 95.0, 8192: 90.0}) == 8192  # any order
    assert effective_length({4096: 85.59, 8192: 99.0}) == 0  # misses at the shortest length
    assert effective_length({4096: 90.0, 8192: 70.0, 16384: 90.0}) == 4096  # no credit after a miss
    assert effective_length({4096: 96.0, 131072: 94.4}) == 131072  # every tested length passes
    assert effective_length({}) == 0 and effective_length({4096: None, 8192: 99.0}) == 0
    assert effective_length({128: 30.0, 256: 21.0, 512: 10.0}, threshold=20.0) == 256


# --- end to end ---------------------------------------------------------------------------------


def test_ruler_end_to_end_on_a_tiny_model(tok, corpus_prefix, qa_files):
    model = tiny_llama(vocab_size=len(tok), context=256)
    # 8 new tokens a task keep this fast on a CPU (RULER's budgets: test_scores_follow_the_answers)
    result = EVALUATIONS["ruler"](model, tok, LENGTH, samples=1, seed=3, data_prefix=corpus_prefix,
                                  qa_squad_path=qa_files["qa_squad_path"], max_new_tokens=8)
    assert result["eval"] == "ruler" and result["length"] == LENGTH
    ran = [t for t in TASK_NAMES if t != "qa_2"]
    assert list(result["metrics"]) == ["average"] + ran
    assert all(0.0 <= v <= 100.0 for v in result["metrics"].values())
    assert result["metrics"]["average"] == pytest.approx(sum(result["metrics"][t] for t in ran) / len(ran))
    assert set(result["skipped"]) == {"qa_2"} and "qa_hotpot_path" in result["skipped"]["qa_2"]
    tasks = result["tasks"]
    assert tasks["qa_1"]["metric"] == "string_match_part" and tasks["vt"]["metric"] == "string_match_all"
    assert tasks["niah_single_2"]["haystack"] == "corpus" and tasks["niah_single_1"]["haystack"] == "noise"
    assert tasks["niah_multikey_2"]["haystack"] == "needle" and tasks["qa_1"]["haystack"] == "documents"
    assert {t["max_new_tokens"] for t in tasks.values()} == {8}
    for e in result["examples"]:
        assert LENGTH - 200 < e["prompt_tokens"] <= LENGTH - 8 and 0.0 <= e["credit"] <= 1.0
    with pytest.raises(EvaluationError, match="needs the experiment's token files"):
        EVALUATIONS["ruler"](model, tok, LENGTH, tasks=["niah_single_2"])
    with pytest.raises(EvaluationError, match="none of the tasks can run"):
        EVALUATIONS["ruler"](model, tok, LENGTH, tasks=["qa_1", "qa_2"])


def test_scores_follow_the_answers(tok, qa_files, monkeypatch):
    """With answers made from the references (full for sample 0, the first reference only for sample
    1), every task's score is what RULER's scorer gives, through batching by answer budget."""
    settings = dict(samples=2, seed=4, haystack="noise", **qa_files)
    expected = {}
    for name in TASK_NAMES:
        for s in generate_task(name, tok, LENGTH, **settings):
            expected[tuple(prompt_ids(tok, s))] = s
    seen = []

    def oracle(model, tokenizer, prompts, max_new_tokens, **kw):
        seen.append(max_new_tokens)
        out = []
        for p in prompts:
            s = expected[tuple(p)]
            assert max_new_tokens == max_new_tokens_for(s["task"])
            out.append("\x01 " + (", ".join(s["outputs"]).upper() if s["index"] == 0 else s["outputs"][0]))
        return out

    monkeypatch.setattr("longctx.evaluate.ruler.evaluation.answer_prompts", oracle)
    metrics = EVALUATIONS["ruler"](None, tok, LENGTH, **settings)["metrics"]
    partial = {"niah_multivalue": 62.5, "niah_multiquery": 62.5, "vt": 60.0, "cwe": 55.0, "fwe": 66.67}
    assert metrics == {"average": pytest.approx(sum(partial.get(t, 100.0) for t in TASK_NAMES) / 13),
                       **{t: partial.get(t, 100.0) for t in TASK_NAMES}}
    assert sorted(seen) == [30, 32, 50, 120, 128]


# --- lm-evaluation-harness ----------------------------------------------------------------------


@pytest.fixture
def lm_eval_ruler(monkeypatch):
    """lm-eval's RULER NIAH generator, importable offline: ``wonderwords`` (not installed) is given this
    module's word lists, and NLTK's punkt download is refused (niah_single_1 does not split sentences)."""
    pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed")
    nltk = pytest.importorskip("nltk", reason="lm-eval's RULER needs nltk")
    downloads = []
    monkeypatch.setattr(nltk, "download", lambda *a, **k: downloads.append(a) or False)
    stub = types.ModuleType("wonderwords")
    stub.RandomWord = type("RandomWord", (), {"_categories": {"nouns": list(NOUNS), "adjectives": list(ADJECTIVES),
                                                              "verbs": list(VERBS)}})
    monkeypatch.setitem(sys.modules, "wonderwords", stub)
    before = set(sys.modules)
    try:
        from lm_eval.tasks.ruler import niah_utils, prepare_niah
    except ImportError as e:
        pytest.skip(f"lm-eval's ruler tasks cannot be imported offline: {e}")
    yield prepare_niah, niah_utils
    for name in set(sys.modules) - before:  # do not leave the stand-in word lists behind
        if name.startswith("lm_eval.tasks.ruler"):
            del sys.modules[name]


# lm-eval's generate_input_output arguments for the NIAH shapes it can build offline (not the essays)
LM_EVAL_SHAPES = {"niah_single_1": ("repeat", "words", "numbers", 1, 1, 1),
                  "niah_multikey_1 on noise": ("repeat", "words", "numbers", 4, 1, 1),
                  "niah_multivalue on noise": ("repeat", "words", "numbers", 1, 4, 1),
                  "niah_multiquery on noise": ("repeat", "words", "numbers", 4, 1, 4),
                  "niah_multikey_2": ("needle", "words", "numbers", 1, 1, 1),
                  "niah_multikey_3": ("needle", "uuids", "uuids", 1, 1, 1)}


@pytest.mark.parametrize("shape", LM_EVAL_SHAPES)
def test_lm_eval_niah_text_is_the_same_for_the_same_draws(lm_eval_ruler, shape):
    """From the same generator state and haystack size, lm-eval's NIAH text and answers are ours."""
    pn, nu = lm_eval_ruler
    assert pn.WORDS == KEY_WORDS
    kind, k, v, num_k, num_v, num_q = LM_EVAL_SHAPES[shape]
    mine = NiahBuilder({"type_haystack": "noise" if kind == "repeat" else kind, "type_needle_k": k,
                        "type_needle_v": v, "num_needle_k": num_k, "num_needle_v": num_v, "num_needle_q": num_q},
                       seed=42)
    for state, size in ((7, 5), (8, 17)):
        random.seed(state)
        text, answers, query = pn.generate_input_output(
            size, pn.get_haystack(kind), type_haystack=kind, num_needle_k=num_k, type_needle_k=k,
            num_needle_v=num_v, type_needle_v=v, template=nu.TEMPLATE, num_needle_q=num_q, random_seed=42)
        s = mine.build(size, random.Random(state))
        assert (text, answers) == (s["input"], s["outputs"])
        if num_v * num_q == 1:
            assert s["answer_prefix"] == f" The special magic {v[:-1]} for {query} mentioned in the provided text is"


def test_lm_eval_niah_single_1_fitting_and_scoring_differ(lm_eval_ruler, tok, austen_tokenizer):
    pn, nu = lm_eval_ruler
    # its own task (500 samples at one length; the tokenizer from a local folder, no download)
    length, budget, line = 1000, 128, len(tok(hs.NOISE + "\n", add_special_tokens=False)["input_ids"])
    random.seed(0)  # lm-eval's evaluator seeds the global generator with 0
    theirs = nu.niah_single_1(tokenizer=str(austen_tokenizer), max_seq_lengths=[length])["test"]
    ours = generate_task("niah_single_1", tok, length, samples=500, seed=0)
    # the harness feeds input + " " + gen_prefix: the same text as our input + answer prefix
    row = theirs[0]
    query = re.search(r"for (\S+) mentioned", row["gen_prefix"]).group(1)
    assert row["input"].endswith("text?") and " " + row["gen_prefix"] == \
        f" The special magic number for {query} mentioned in the provided text is"
    # its haystack grows in steps of 5 lines (below 4096 tokens) while prompt + answers + budget fit,
    # without the answer prefix (BOS counted): with the prefix, what the model sees can pass the length
    assert all(r["input"].count(hs.NOISE) % 5 == 0 for r in theirs)
    assert all(r["length"] == len(tok(r["input"])["input_ids"]) + budget <= length for r in theirs)
    fed = [len(tok(r["input"] + " " + r["gen_prefix"])["input_ids"]) + budget for r in theirs]
    assert max(fed) > length
    # ours: each sample has the most lines whose whole input (prefix included) fits
    assert all(length - line < s["prompt_tokens"] + budget <= length for s in ours)
    # its samples come from another stream (the global generator, after its size search)
    assert [r["outputs"] for r in theirs.select(range(50))] != [s["outputs"] for s in ours[:50]]
    # its QA scorer differs from RULER's: best sample's fraction, not any-reference per sample
    from lm_eval.tasks.ruler.common_utils import string_match_part as lm_part
    assert lm_part(["in 1750"], [["1750", "Paris"]]) == 0.5
    assert string_match_part(["in 1750"], [["1750", "Paris"]]) == 100.0
