"""LongRoPE's factor search (Ding et al. 2024, Algorithm 1), as a library.

- ``space``: the individuals (``n_hat`` and monotone factors on a grid), bounds, the PI / NTK /
  YaRN seeds, the settings in force at a length;
- ``tasks``: what one search looks for (plain, secondary after fine-tuning, short-context recovery)
  and the records they write;
- ``evolution``: the evolutionary algorithm, its resumable fingerprinted log, early abandoning;
- ``fitness``: perplexity of a model on fixed documents as the fitness, and ``run_search``.
"""

from longctx.search.evolution import (  # noqa: F401
    CallableFitness,
    Fitness,
    FitnessLog,
    Score,
    _monotone,
    crossover,
    cutoff_before,
    evolutionary_search,
    key_of,
    mutate,
)
from longctx.search.fitness import DocumentFitness, PerplexityFitness, pick_documents, run_search  # noqa: F401
from longctx.search.space import Individual, SearchError, SearchSpace, seed_factors, settings_at, space_for  # noqa: F401
from longctx.search.tasks import SearchTask, final_record, plain_task, recovery_task, secondary_task  # noqa: F401
