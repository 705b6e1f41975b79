"""RULER (Hsieh et al. 2024, "RULER: What's the Real Context Size of Your Long-Context Language
Models?", github.com/NVIDIA/RULER), offline: its 13 tasks generated here in RULER's prompt formats,
fitted to each length in the model's own tokens.

Modules: ``tasks`` (task list, templates, budgets, the NIAH / VT / CWE / FWE builders), ``qa``
(SQuAD and HotpotQA from local files), ``haystack`` (noise, corpus words, needle insertion),
``fitting`` (sizing samples to a length, the model input), ``evaluation`` (``generate_task``, the
samples of one task at one length), ``words`` (the fixed word lists standing in for ``wonderwords``).

What matches RULER: the task set and arguments (``scripts/synthetic.yaml``), templates, answer
prefixes and budgets (``scripts/data/synthetic/constants.py``), the needle format, keys and values
(7-digit numbers, adjective-noun words, UUIDs), the singular rewording, noise-line and depth
insertion, distractor needles, variable chains with their one-shot example, CWE's word counts and
one-shot example (short and long forms at 4096 tokens), FWE's Zipf counts, QA's document selection
and numbering, the fixed-seed shuffles.

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
"""

from longctx.evaluate.ruler.evaluation import generate_task, min_length  # noqa: F401
from longctx.evaluate.ruler.tasks import TASK_NAMES, TASKS  # noqa: F401
