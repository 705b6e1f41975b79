"""Models: loading a stage's weights, importing a base model, the shared loss and kernels.

- ``loading``: ``load_model`` (safetensors only), devices and dtypes;
- ``sources``: a base model and its tokenizer from the hub, a local folder or a GGUF file;
- ``llama``: the small LLaMA the embedded default pretrains from scratch;
- ``loss``: the chunked LM-head loss (full logits never exist) and per-row NLL of windows;
- ``kernels``: compiled decoder layers and SDPA kernel selection;
- ``window``: sliding-window attention widened to a stage's length.
"""

from longctx.models.loading import DTYPES, load_model, pick_device  # noqa: F401
from longctx.models.window import widen_sliding_window  # noqa: F401
