"""RoPE scaling methods, one registry for every stage (fine-tuning, search, evaluation).

A method turns (scale, parameters, the model's RoPE geometry) into a transformers
``rope_parameters`` dict. Where transformers has a built-in ``rope_type`` that is exactly the
method, that type is used, so an extended checkpoint loads with a plain ``from_pretrained``.
The others are registered as custom rope types when this package is imported.

    from longctx.rope import RopeGeometry, build_rope_parameters, apply_to_model
    params = build_rope_parameters("pi", scale=4, params={}, geometry=RopeGeometry(64, 1e4, 2048))
"""

from longctx.rope.registry import (  # noqa: F401
    METHODS,
    RopeGeometry,
    RopeMethodError,
    apply_to_model,
    build_rope_parameters,
    cache_is_stale,
    cos_sin,
    geometry_of,
    inverse_frequencies,
    length_at,
    length_dependent_beyond,
    method_names,
    rope_spec_of,
    switch_lengths,
    training_inputs,
)
from longctx.rope import methods as _methods  # noqa: F401  (fills the registry)
from longctx.rope.methods import rope_at_length, with_original_rope_below  # noqa: F401
from longctx.rope import hf_patch as _hf_patch

_hf_patch.install_with_transformers()
