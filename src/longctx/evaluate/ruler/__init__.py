"""RULER (Hsieh et al. 2024, "RULER: What's the Real Context Size of Your Long-Context Language
Models?", github.com/NVIDIA/RULER), offline: its 13 tasks generated here in RULER's prompt formats,
fitted to each length in the model's own tokens, answered greedily and scored as RULER scores.

Modules: ``tasks`` (task list, templates, budgets, the NIAH / VT / CWE / FWE builders), ``qa``
(SQuAD and HotpotQA from local files), ``haystack`` (noise, corpus words, needle insertion),
``fitting`` (sizing samples to a length, the model input), ``scoring`` (RULER's scorers and
effective length), ``evaluation`` (the registered ``ruler`` evaluation), ``words`` (the fixed word
lists standing in for ``wonderwords``).

Settings of ``EVALUATIONS["ruler"](model, tokenizer, length, ...)``: ``tasks`` (default all 13, in
RULER's order), ``samples`` per task (4; RULER uses 500), ``haystack`` (``corpus``: the words of the
token files at ``data_prefix`` stand in for RULER's Paul Graham essays; ``noise``: RULER's repeated
sentence), ``max_new_tokens`` (None: RULER's tokens_to_generate, 128 NIAH, 30 VT, 120 CWE, 50 FWE,
32 QA; an int for all, or a dict by task or family), ``qa_squad_path`` / ``qa_hotpot_path`` (local
files; without one its task is skipped and ``result["skipped"]`` says why), ``chat_template``
(False: RULER's base template, prompt then answer prefix; True: the tokenizer's chat template, the
answer prefix after the generation prompt), ``batch_size``, ``batch_tokens``, ``seed``.
``metrics`` is ``{"average": mean over the tasks that ran, <task>: score 0-100, ...}``;
``effective_length`` turns averages by length into RULER's effective length.

What matches RULER: the task set and arguments (``scripts/synthetic.yaml``), templates, answer
prefixes and budgets (``scripts/data/synthetic/constants.py``), the needle format, keys and values
(7-digit numbers, adjective-noun words, UUIDs), the singular rewording, noise-line and depth
insertion, distractor needles, variable chains with their one-shot example, CWE's word counts and
one-shot example (short and long forms at 4096 tokens), FWE's Zipf counts, QA's document selection
and numbering, the fixed-seed shuffles, the post-processing and both scorers, per-task rounding.

Where it deviates (and why):
  * word lists: fixed lists in ``words.py`` instead of ``wonderwords`` (offline); CWE leaves out
    words inside other words (substring scoring would credit 'bold' for 'old') and falls back to
    adjective-noun pairs where RULER falls back to an English word list;
  * essays: the corpus words instead (not available offline); sentences are split by a rule-based
    splitter instead of NLTK punkt (a download);
  * fitting (``fitting.py``): model tokens with BOS and chat template counted; each sample takes
    the largest haystack that fits with its own draws instead of one size for all, stepped down by
    a fixed increment when a sample overflows; FWE's word count is bisected like the other tasks
    instead of stepped by length/32; too-short lengths are errors;
  * randomness: a seeded ``random.Random`` per (seed, task, length) instead of the global ``random``
    and ``numpy.random``; repeated keys, distractors reusing a real key and repeated variable names
    are redrawn (RULER leaves them, which can make a question ambiguous);
  * short lengths: VT's one-shot example gets min(500, length/4) tokens instead of 500; FWE's
    vocabulary has at least 4 words;
  * chat: CWE's one-shot example sits in the same user turn (RULER repeats its model template).

Compared with lm-evaluation-harness 0.4.13's ``ruler`` group (``lm_eval/tasks/ruler``; tested in
tests/test_evaluate_ruler.py): given the same generator state and haystack size, its NIAH
``generate_input_output`` gives this module's prompt text and answers exactly, for every shape it
builds offline (noise and distractor-needle haystacks: niah_single_1, niah_multikey_2/3, and the
multi-key, multi-value and multi-query needles on noise; its essays come from the Hugging Face hub),
given the same word list (lm-eval reads ``wonderwords``, not installed here). Its samples of
``niah_single_1`` still differ from this module's because (1) it draws from the global ``random`` left by the harness and continues that stream
through its size search, (2) it grows the haystack in steps of 5 lines (25 from 4096 tokens) while
the prompt, the answers and the budget fit, and checks that on the prompt without the answer prefix
(``gen_prefix``, which the harness appends after a space): the text the model sees can pass the
length (at 1000 tokens with the tests' tokenizer, by up to 10 tokens), where RULER and this module
count the prefix and take the largest fitting size, and (3) its ``string_match_part`` (QA) scores
the best sample's fraction of references instead of RULER's any-reference credit per sample.
"""

from longctx.evaluate.ruler.evaluation import evaluate_ruler, generate_task, min_length  # noqa: F401
from longctx.evaluate.ruler.scoring import effective_length, string_match_all, string_match_part  # noqa: F401
from longctx.evaluate.ruler.tasks import TASK_NAMES, TASKS  # noqa: F401
