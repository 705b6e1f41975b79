"""RULER's QA tasks (``scripts/data/synthetic/qa.py``): a question over its gold paragraphs hidden
among distractor paragraphs, as many as fit the length.

Only local files are read (RULER downloads them with ``scripts/data/synthetic/json/
download_qa_dataset.sh``); the formats accepted are those files' own:

* ``qa_1``, SQuAD 2.0 (``dev-v2.0.json``; SQuAD 1.1 works too): ``{"data": [{"paragraphs": [{"context":
  str, "qas": [{"question": str, "answers": [{"text": str}, ...], "is_impossible": bool}]}]}]}``.
  Unanswerable questions (``is_impossible``; absent means answerable) are left out; the references
  are all the answer texts; the distractors are first the article's other paragraphs, then random
  paragraphs of other articles.
* ``qa_2``, HotpotQA distractor setting (``hotpot_dev_distractor_v1.json``): ``[{"question": str,
  "answer": str, "context": [[title, [sentence, ...]], ...]}]``; a document is ``title\\nsentences``
  joined, all of a question's ten context paragraphs are its own documents, the distractors random
  paragraphs of other questions.

Documents are the distinct paragraphs, sorted; sample ``i`` asks question ``i`` of the file (RULER
takes questions in file order); the documents are shuffled with a fresh ``random.Random(seed)``
and numbered ``Document 1:`` and on. ``size`` counts documents.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from longctx.evaluate.registry import EvaluationError
from longctx.evaluate.ruler.tasks import TEMPLATES

DOCUMENT = "Document {i}:\n{document}"


def _load(path, dataset: str):
    p = Path(path)
    if not p.is_file():
        raise EvaluationError(f"ruler {dataset}: QA file {path} does not exist")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EvaluationError(f"ruler {dataset}: QA file {path} is not JSON ({e})") from None


def read_squad(path) -> tuple[list[dict], list[str]]:
    """(questions, documents) of a SQuAD file; a question holds ``query``, ``outputs``, ``context``
    (its paragraph's index) and ``more_context`` (the article's other paragraphs)."""
    data = _load(path, "squad")
    try:
        articles = data["data"]
        docs = sorted({p["context"] for a in articles for p in a["paragraphs"]})
        index = {d: i for i, d in enumerate(docs)}
        questions = []
        for a in articles:
            siblings = [index[p["context"]] for p in a["paragraphs"]]
            for p in a["paragraphs"]:
                own = index[p["context"]]
                for q in p["qas"]:
                    if q.get("is_impossible", False):
                        continue
                    questions.append({"query": q["question"], "outputs": [x["text"] for x in q["answers"]],
                                      "context": [own], "more_context": [i for i in siblings if i != own]})
    except (KeyError, TypeError) as e:
        raise EvaluationError(f"ruler squad: {path} is not in SQuAD's format (missing {e}); expected {{'data': "
                              f"[{{'paragraphs': [{{'context', 'qas': [{{'question', 'answers'}}]}}]}}]}}") from None
    return questions, docs


def read_hotpotqa(path) -> tuple[list[dict], list[str]]:
    """(questions, documents) of a HotpotQA file; ``context`` lists a question's own paragraphs."""
    data = _load(path, "hotpotqa")
    try:
        def doc(title, sentences):
            return f"{title}\n{''.join(sentences)}"

        docs = sorted({doc(t, s) for d in data for t, s in d["context"]})
        index = {d: i for i, d in enumerate(docs)}
        questions = [{"query": d["question"], "outputs": [d["answer"]],
                      "context": [index[doc(t, s)] for t, s in d["context"]]} for d in data]
    except (KeyError, TypeError, ValueError) as e:
        raise EvaluationError(f"ruler hotpotqa: {path} is not in HotpotQA's format ({e}); expected a list of "
                              f"{{'question', 'answer', 'context': [[title, [sentences]]]}}") from None
    return questions, docs


class QABuilder:
    """One QA dataset; sample ``index`` asks question ``index``."""

    def __init__(self, dataset: str, path, seed: int):
        readers = {"squad": read_squad, "hotpotqa": read_hotpotqa}
        self.dataset, self.seed = dataset, seed
        self.questions, self.docs = readers[dataset](path)
        if not self.questions:
            raise EvaluationError(f"ruler {dataset}: {path} has no answerable question")

    def question(self, index: int) -> dict:
        if index >= len(self.questions):
            raise EvaluationError(f"ruler {self.dataset}: sample {index} asks question {index}, but the file has "
                                  f"{len(self.questions)} answerable questions")
        return self.questions[index]

    def min_size(self, index: int = 0) -> int:
        return len(self.question(index)["context"])

    def build(self, size: int, rng: random.Random, index: int = 0) -> dict:
        q = self.question(index)
        own, more = q["context"], q.get("more_context", [])
        if size < len(self.docs):
            if size - len(own) > len(more):
                taken = set(own) | set(more)
                others = [i for i in range(len(self.docs)) if i not in taken]
                chosen = own + more + rng.sample(others, min(len(others), size - len(own) - len(more)))
            else:
                chosen = own + rng.sample(more, size - len(own))
            docs = [self.docs[i] for i in chosen]
        else:  # RULER repeats the whole collection when more documents are asked than exist
            docs = (self.docs * -(-size // len(self.docs)))[:size]
        random.Random(self.seed).shuffle(docs)
        template, prefix = TEMPLATES["qa"]
        context = "\n\n".join(DOCUMENT.format(i=i + 1, document=d) for i, d in enumerate(docs))
        return {"input": template.format(context=context, query=q["query"]), "answer_prefix": prefix,
                "outputs": q["outputs"], "size": size, "gold_documents": [self.docs[i] for i in own]}
