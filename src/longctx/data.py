"""Text corpora: read (local files or a streamed hub dataset), tokenize, pack into token files.

A prepared split is three files sharing a prefix:
  ``<prefix>.bin``   all tokens as one memory-mapped array: BOS doc0 EOS BOS doc1 EOS ...
  ``<prefix>.idx.npy`` int64 [n_docs, 2]: start and end of each document's own tokens in .bin
  ``<prefix>.json``  metadata (dtype, counts, token ids, source, document ids)
Training reads the stream (documents separated by BOS/EOS); evaluations read documents.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from longctx.artifacts import ArtifactError, atomic_path, read_json, write_json

log = logging.getLogger(__name__)

CHAPTER_HEADING = re.compile(r"(?im)^[ \t]*chapter[ \t]+[0-9ivxlc]+\.?[ \t]*$")


class DataError(ValueError):
    """A corpus, split or token file is missing or too small; the message says which."""


# --- reading documents -------------------------------------------------------------------------


def iter_documents(corpus: dict, split: str, base_dir: str | Path = ".") -> Iterator[tuple[str, str]]:
    """Yield (document id, text) for one split of a corpus config (see schema `corpora`)."""
    if split not in corpus["splits"]:
        raise DataError(f"corpus has no split {split!r} (splits: {sorted(corpus['splits'])})")
    spec = corpus["splits"][split]
    if corpus["source"] == "local":
        yield from _iter_local(Path(base_dir) / corpus["root"], spec, corpus["documents"],
                               corpus.get("encoding", "utf-8"))
    else:
        yield from _iter_hub(corpus, spec)


def _iter_local(root: Path, files, documents: str, encoding: str = "utf-8"):
    files = [files] if isinstance(files, str) else files
    for name in files:
        path = root / name
        if not path.is_file():
            raise DataError(f"corpus file {path} does not exist")
        try:
            text = path.read_text(encoding=encoding)
        except UnicodeDecodeError as e:
            raise DataError(f"corpus file {path} is not {encoding} text ({e}); set the corpus' `encoding` "
                            f"(e.g. encoding: latin-1)") from None
        except LookupError:
            raise DataError(f"corpus file {path}: unknown encoding {encoding!r} (the corpus' `encoding`)") from None
        if documents == "file":
            yield path.stem, text
            continue
        starts = [m.start() for m in CHAPTER_HEADING.finditer(text)]
        if not starts:
            raise DataError(f"{path}: documents: chapter, but no chapter headings found")
        for k, (a, b) in enumerate(zip(starts, starts[1:] + [len(text)])):
            yield f"{path.stem}/{k + 1}", text[a:b].strip()


def _iter_hub(corpus: dict, split_name):
    """Stream a hub dataset; the same code reads a local dataset folder or data files by path."""
    import datasets

    dataset = datasets.load_dataset(
        corpus["hub_path"],
        corpus["hub_name"],
        split=split_name,
        streaming=True,
        revision=corpus["hub_revision"],
    )
    field = corpus["text_field"]
    for k, row in enumerate(dataset):
        if field not in row:
            raise DataError(f"hub dataset {corpus['hub_path']}: no text field {field!r} (fields: {sorted(row)})")
        yield str(row.get("id", row.get("short_book_title", k))), row[field]


# --- tokenizers --------------------------------------------------------------------------------


def train_tokenizer(texts: Iterator[str], vocab_size: int, out_dir: str | Path):
    """Train a byte-level BPE tokenizer (for the `pretrain` source) and save it as a HF tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    fast.save_pretrained(str(out_dir))
    return fast


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), use_fast=True)


# --- token files -------------------------------------------------------------------------------


def prepare_split(
    corpus: dict,
    split: str,
    tokenizer_dir: str | Path,
    out_prefix: str | Path,
    base_dir: str | Path = ".",
    batch_size: int = 64,
) -> dict:
    """Tokenize one split (batched, fast tokenizer) and write its token files; returns the metadata.

    Reading stops at the corpus' token budget (``max_tokens``) or document limit, so a streamed
    hub split is only read as far as the experiment needs.
    """
    tokenizer = load_tokenizer(tokenizer_dir)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if bos is None or eos is None:
        # some tokenizers define one of them only; use it for both
        bos = eos = bos if bos is not None else eos
    if bos is None:
        raise DataError(f"tokenizer at {tokenizer_dir} has neither a BOS nor an EOS token")
    dtype = np.uint16 if len(tokenizer) < 2**16 else np.uint32
    max_tokens, max_docs = corpus["max_tokens"], corpus["max_documents"]

    out_prefix = Path(out_prefix)
    bounds, ids, n_tokens = [], [], 0
    started = time.time()
    with atomic_path(out_prefix.with_suffix(".bin")) as tmp_bin, open(tmp_bin, "wb") as f:
        position = 0
        batch: list[tuple[str, str]] = []

        def flush():
            nonlocal position, n_tokens
            encoded = tokenizer([t for _, t in batch], add_special_tokens=False)["input_ids"]
            for (doc_id, _), toks in zip(batch, encoded):
                if max_tokens is not None and n_tokens >= max_tokens:
                    break
                np.asarray([bos, *toks, eos], dtype=dtype).tofile(f)
                bounds.append((position + 1, position + 1 + len(toks)))
                ids.append(doc_id)
                position += len(toks) + 2
                n_tokens += len(toks)
            batch.clear()

        for doc_id, text in iter_documents(corpus, split, base_dir):
            if (max_docs is not None and len(ids) + len(batch) >= max_docs) or (
                max_tokens is not None and n_tokens >= max_tokens
            ):
                break
            batch.append((doc_id, text))
            if len(batch) >= batch_size:
                flush()
                log.info("prepare %s: %d documents, %d tokens, %.0f tokens/s", split, len(ids), n_tokens,
                         n_tokens / max(time.time() - started, 1e-9))
        if batch:
            flush()
    if not ids:
        raise DataError(f"split {split!r} produced no documents")
    with atomic_path(out_prefix.with_suffix(".idx.npy")) as tmp_idx:
        with open(tmp_idx, "wb") as g:
            np.save(g, np.asarray(bounds, dtype=np.int64))
    meta = {
        "split": split,
        "dtype": np.dtype(dtype).name,
        "documents": len(ids),
        "tokens": n_tokens,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "vocab_size": len(tokenizer),
        "document_ids": ids,
        "source": {k: corpus[k] for k in ("source", "root", "hub_path", "hub_name", "hub_revision") if corpus.get(k)},
    }
    write_json(out_prefix.with_suffix(".json"), meta)
    return meta


@dataclass
class TokenFile:
    """A prepared split, memory-mapped."""

    prefix: Path
    tokens: np.ndarray  # the whole stream, BOS/EOS between documents
    bounds: np.ndarray  # [n_docs, 2] start/end of each document's own tokens
    meta: dict

    @classmethod
    def open(cls, prefix: str | Path) -> "TokenFile":
        prefix = Path(prefix)
        for suffix in (".bin", ".idx.npy", ".json"):
            if not prefix.with_suffix(suffix).exists():
                raise DataError(f"token file {prefix.with_suffix(suffix)} is missing; run the prepare stage")
        meta = read_json(prefix.with_suffix(".json"))
        tokens = np.memmap(prefix.with_suffix(".bin"), dtype=np.dtype(meta["dtype"]), mode="r")
        try:
            bounds = np.load(prefix.with_suffix(".idx.npy"), allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise ArtifactError(f"{prefix.with_suffix('.idx.npy')} is corrupt ({e}); delete the token files "
                                f"{prefix}.* and rerun, which rebuilds them") from None
        if bounds.ndim != 2 or (len(bounds) and int(bounds.max()) > len(tokens)):
            raise ArtifactError(f"{prefix}: the document index does not fit the token file (cut short?); delete "
                                f"{prefix}.* and rerun, which rebuilds them")
        return cls(prefix, tokens, bounds, meta)

    def __len__(self) -> int:
        return len(self.bounds)

    def document(self, i: int) -> np.ndarray:
        a, b = self.bounds[i]
        return self.tokens[a:b]

    def documents_at_least(self, length: int) -> list[int]:
        """Indices of documents with at least ``length`` tokens."""
        return [i for i, (a, b) in enumerate(self.bounds) if b - a >= length]


# --- the Vicuna v1.1 conversation template (FastChat's ``vicuna_v1.1``), shared by instruction
# fine-tuning (longctx.train.supervised) and the prompts of Giraffe's evaluations (Pal et al. 2023) ---

VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")


def vicuna_prompt(user: str, system: str = VICUNA_SYSTEM) -> str:
    """One user turn and the cue for the assistant's answer: ``<system> USER: <user> ASSISTANT:``."""
    return f"{system} USER: {user} ASSISTANT:"
