"""What the retrieval evaluations share: prompt encoding, batched answers, and the scorers."""

from __future__ import annotations

import re
from collections import defaultdict



def encode(tokenizer, text: str) -> list[int]:
    """Token ids of a prompt with the tokenizer's own start tokens (e.g. LLaMA's BOS), no EOS."""
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    eos = tokenizer.eos_token_id
    if ids and eos is not None and ids[-1] == eos and eos != tokenizer.bos_token_id:
        ids = ids[:-1]
    return ids


def encode_prompt(tokenizer, text: str, chat: bool = False) -> list[int]:
    """A question prompt's token ids; with ``chat``, wrapped as a user turn in the tokenizer's chat template."""
    if not chat:
        return encode(tokenizer, text)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("chat_template: true, but the tokenizer has no chat template")
    wrapped = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                            tokenize=False)
    return list(tokenizer(wrapped, add_special_tokens=False)["input_ids"])


def answer_prompts(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, *, batch_size: int = 16,
                   batch_tokens: int = 32768) -> list[str]:
    """Greedy answers (decoded text) to token-id prompts, batched where lengths allow."""
    from longctx.evaluate.generation import batched_greedy_generate  # torch: imported when answers are generated
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    new = batched_greedy_generate(model, prompts, max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                                  pad_token_id=pad, max_batch_size=batch_size, max_batch_tokens=batch_tokens)
    return [tokenizer.decode(ids, skip_special_tokens=True) for ids in new]


def words(text: str) -> int:
    """Whitespace-separated words: a lower bound of a text's tokens for tokenizers that split on
    whitespace first (byte-level BPE, SentencePiece), used to check lengths before any tokenizer exists."""
    return len(text.split())


def first_integer(text: str) -> int | None:
    """The first integer in ``text`` (PI's passkey and LongChat-Lines scoring), or None."""
    m = re.search(r"\d+", text)
    return int(m.group()) if m else None


def presence(reference: str, output: str) -> bool:
    """Giraffe's presence accuracy: the stripped reference answer occurs in the output."""
    return reference.strip() in output


def mean_by(rows: list[dict], key: str, value: str = "correct") -> dict:
    """Mean of ``value`` per distinct ``key`` over result rows."""
    groups = defaultdict(list)
    for r in rows:
        groups[r[key]].append(float(r[value]))
    return {k: sum(v) / len(v) for k, v in groups.items()}
