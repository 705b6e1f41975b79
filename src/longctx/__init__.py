"""longctx: reproduce PI, Giraffe and LongRoPE context extension of RoPE models, as a Snakemake workflow.

Importing the package registers its custom RoPE types with transformers, so extended checkpoints
load with a plain ``from_pretrained``.
"""

__version__ = "0.1.0"

from longctx import rope  # noqa: E402,F401
