"""LongRoPE's factor search (Ding et al. 2024, Algorithm 1), as a library, with LongRoPE2's changes to it
(Shang et al. 2025: needle-driven fitness, critical-dimension search) as settings.

- ``space``: the individuals (``n_hat`` and monotone factors on a grid), bounds, the PI / NTK /
  YaRN seeds, the settings in force at a length;
- ``tasks``: what one search looks for (plain, secondary after fine-tuning, short-context recovery)
  and the records they write;
- ``evolution``: the evolutionary algorithm, its resumable fingerprinted log, early abandoning;
- ``fitness``: perplexity of a model on fixed documents as the fitness (LongRoPE), or only of the
  answers to needles planted in them (LongRoPE2, ``needle`` builds those rows), and ``run_search``;
- ``critical``: LongRoPE2's critical-dimension-aware space (searched factors from the critical
  dimension on, NTK below it).
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
from longctx.search.critical import CriticalSpace, critical_dimension, critical_space, ntk_below  # noqa: F401
from longctx.search.fitness import (DocumentFitness, NeedleFitness, PerplexityFitness, pick_documents,  # noqa: F401
                                    run_search)
from longctx.search.needle import NeedleRows, needle_rows  # noqa: F401
from longctx.search.space import Individual, SearchError, SearchSpace, seed_factors, settings_at, space_for  # noqa: F401
from longctx.search.tasks import SearchTask, final_record, plain_task, recovery_task, secondary_task  # noqa: F401
