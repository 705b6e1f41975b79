"""Supervised fine-tuning on (prompt, response) examples: the loss on the response tokens only.

Two uses: PI's GovReport fine-tune before ROUGE (Chen et al. 2023, section 3.4: the summary is
trained, the prompt with the report masked; examples from ``longctx.evaluate.govreport``) and
Giraffe's instruction fine-tuning (Pal et al. 2023: Vicuna-format conversations, the assistant's
turns trained, the rest masked; examples from ``conversation_examples``). An example is
``{"input_ids", "labels"}`` with labels -100 where no loss is taken; ``ExampleSequences`` serves
them to ``longctx.train.loop.train`` as it serves packed windows, epoch after epoch in a seeded order.
"""

from __future__ import annotations

import numpy as np
import torch

from longctx.data import VICUNA_SYSTEM, DataError
from longctx.train.packing import PackedBatch

IGNORE = -100
# the two conversation formats: ShareGPT's turns (from/value) and chat messages (role/content)
ROLE_KEYS = (("from", "value"), ("role", "content"))
ASSISTANT = {"gpt", "assistant", "chatgpt", "bard", "model"}
USER = {"human", "user"}


class ExampleSequences:
    """Examples in a seeded random order, epoch after epoch; a batch is right-padded to its longest
    example (labels -100 on padding, which comes after every real token, so causal attention needs
    no mask)."""

    def __init__(self, examples: list[dict], seed: int, pad_token_id: int = 0):
        if not examples:
            raise DataError("supervised fine-tuning: no training examples")
        for i, e in enumerate(examples):
            if len(e["input_ids"]) != len(e["labels"]):
                raise DataError(f"supervised fine-tuning: example {i} has {len(e['input_ids'])} tokens but "
                                f"{len(e['labels'])} labels")
        self.examples, self.seed, self.pad = examples, seed, pad_token_id
        self.n = len(examples)

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def packed(self, position: int, size: int) -> PackedBatch:
        """Examples number position .. position+size-1 of the endless seeded stream."""
        chosen = [self.examples[int(self._order(k // self.n)[k % self.n])] for k in range(position, position + size)]
        width = max(len(e["input_ids"]) for e in chosen)
        ids = torch.full((size, width), self.pad, dtype=torch.long)
        labels = torch.full((size, width), IGNORE, dtype=torch.long)
        for row, e in enumerate(chosen):
            ids[row, : len(e["input_ids"])] = torch.tensor(e["input_ids"])
            labels[row, : len(e["labels"])] = torch.tensor(e["labels"])
        return PackedBatch(ids, torch.zeros_like(ids), labels=labels)


def steps_for(examples: int, epochs: float, batch_size: int) -> int:
    """Optimizer steps for ``epochs`` passes over ``examples`` at ``batch_size`` examples a step."""
    return max(1, int(np.ceil(examples * epochs / batch_size)))


# --- conversations -------------------------------------------------------------------------------


def turns_of(row: dict, field: str) -> list[tuple[str, str]]:
    """(``system`` | ``user`` | ``assistant``, text) of a row's conversation in either format."""
    turns = row.get(field)
    if not isinstance(turns, list) or not turns:
        raise DataError(f"instruct.dataset.field: a row has no conversation list {field!r} (fields: {sorted(row)})")
    out = []
    for t in turns:
        keys = next(((r, c) for r, c in ROLE_KEYS if r in t and c in t), None)
        if keys is None:
            raise DataError(f"instruct.dataset.field: a turn of {field!r} has neither from/value nor role/content "
                            f"(keys: {sorted(t)})")
        role = str(t[keys[0]]).lower()
        role = "assistant" if role in ASSISTANT else "user" if role in USER else role
        out.append((role, t[keys[1]]))
    return out


def _vicuna_pieces(turns: list[tuple[str, str]], eos: str) -> list[tuple[str, bool]]:
    """FastChat's ``vicuna_v1.1``: ``<system> USER: u ASSISTANT: a</s>USER: ...``; (text, trained)."""
    system = turns[0][1] if turns and turns[0][0] == "system" else VICUNA_SYSTEM
    pieces = [(system + " ", False)]
    for role, text in turns:
        if role == "system":
            continue
        if role == "assistant":
            pieces += [("ASSISTANT: ", False), (text + eos, True)]
        else:
            pieces.append((f"USER: {text} ", False))
    return pieces


def _chat_pieces(tokenizer, turns: list[tuple[str, str]]) -> list[tuple[str, bool]]:
    """The tokenizer's chat template: each assistant turn is the text it adds to the rendered
    conversation (trained); the text around it is not."""
    messages = [{"role": r, "content": t} for r, t in turns]
    pieces, done = [], ""
    for i, (role, _) in enumerate(turns):
        if role != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        upto = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not (before.startswith(done) and upto.startswith(before)):
            raise DataError("instruct.template: the tokenizer's chat template does not render a conversation "
                            "as a prefix of its continuation; use template: vicuna")
        pieces += [(before[len(done):], False), (upto[len(before):], True)]
        done = upto
    return pieces


def conversation_example(tokenizer, turns: list[tuple[str, str]], max_length: int, template: str = "auto") -> dict:
    """One example: the conversation in ``template`` (``auto``: the tokenizer's chat template when it
    has one, else Vicuna v1.1), labels on the assistant turns only, cut to ``max_length`` tokens."""
    chat = template == "chat" or (template == "auto" and getattr(tokenizer, "chat_template", None))
    if chat:
        pieces = _chat_pieces(tokenizer, turns)
        ids = []
    else:
        pieces = _vicuna_pieces(turns, tokenizer.eos_token or "")
        ids = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    labels = [IGNORE] * len(ids)
    for text, trained in pieces:
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece
        labels += list(piece) if trained else [IGNORE] * len(piece)
    return {"input_ids": ids[:max_length], "labels": labels[:max_length]}


def conversation_examples(tokenizer, rows: list[dict], field: str, max_length: int,
                          template: str = "auto") -> list[dict]:
    """Examples of the rows' conversations; a row with no assistant token left in ``max_length`` is dropped."""
    examples = [conversation_example(tokenizer, turns_of(r, field), max_length, template) for r in rows]
    kept = [e for e in examples if any(t != IGNORE for t in e["labels"])]
    if not kept:
        raise DataError(f"instruct: no conversation has an assistant token within {max_length} tokens")
    return kept


def load_conversations(path: str, name: str | None = None, split: str = "train", revision=None,
                       limit: int | None = None) -> list[dict]:
    """Rows of a conversation dataset: a hub id, a local folder in a hub format, or a JSON/JSONL file."""
    import datasets

    if path.endswith((".json", ".jsonl")):
        rows = datasets.load_dataset("json", data_files=path, split="train")
    else:
        rows = datasets.load_dataset(path, name, split=split, revision=revision)
    if limit:
        rows = rows.select(range(min(limit, len(rows))))
    return [dict(r) for r in rows]
