"""longctx: reproduce PI, Giraffe and LongRoPE context extension of RoPE models, as a Snakemake workflow.

Importing the package registers its custom RoPE types with transformers (as soon as transformers is
imported, so code that never needs it does not load it), so extended checkpoints load with a plain
``from_pretrained``.
"""

__version__ = "0.1.0"

from longctx import rope  # noqa: E402,F401
