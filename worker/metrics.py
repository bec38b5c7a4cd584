"""Text metrics of generated answers against reference answers: pure functions, no model.

Exact match and token F1 follow SQuAD's definitions on normalized text; chrF is sacrebleu's and ROUGE-L is
Google's rouge-score, so the numbers mean what they mean elsewhere. Every rate is in 0..1 (chrF is
sacrebleu's 0..100 divided by 100). The localization score is the spec's domain metric: the share of answers
that use every local term (names, places, currency) the example expects.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from functools import cache
from typing import Any

from app.training_config import CHRF, EXACT_MATCH, LOCALIZATION_SCORE, ROUGE_L, TOKEN_F1

TEXT_METRICS = (EXACT_MATCH, TOKEN_F1, CHRF, ROUGE_L, LOCALIZATION_SCORE)


def normalize(text: str) -> str:
    """Case-folded, NFKC, punctuation dropped, whitespace collapsed: "Kofi pays GH₵6." -> "kofi pays gh₵6"."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize(prediction) == normalize(reference))


def token_f1(prediction: str, reference: str) -> float:
    """F1 of the normalized words both share (counted with multiplicity), as SQuAD scores answers."""
    predicted, expected = normalize(prediction).split(), normalize(reference).split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def chrf(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus chrF (sacrebleu defaults: character 6-grams, beta 2), in 0..1."""
    import sacrebleu

    return float(sacrebleu.corpus_chrf(list(predictions), [list(references)]).score) / 100.0


def sentence_chrf(prediction: str, reference: str) -> float:
    import sacrebleu

    return float(sacrebleu.sentence_chrf(prediction, [reference]).score) / 100.0


@cache
def _rouge_scorer() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (longest common subsequence of words; rouge-score's tokenizer keeps a-z and 0-9)."""
    return float(_rouge_scorer().score(reference, prediction)["rougeL"].fmeasure)


def _term_pattern(term: str) -> re.Pattern[str]:
    # Word edges only where the term has a word character at that edge: "Ama" is not in "Amanda", but "GH₵"
    # is in "GH₵6".
    folded = unicodedata.normalize("NFKC", term).casefold()
    start = r"(?<!\w)" if re.match(r"\w", folded) else ""
    end = r"(?!\w)" if re.search(r"\w$", folded) else ""
    return re.compile(start + re.escape(folded) + end)


def uses_term(text: str, term: str) -> bool:
    return _term_pattern(term).search(unicodedata.normalize("NFKC", text).casefold()) is not None


def expected_terms(reference: str, glossary: Sequence[str], listed: Sequence[str] = ()) -> list[str]:
    """The terms an answer should use: those listed for the example, and the glossary's that the reference uses."""
    terms = list(dict.fromkeys(listed))
    terms += [term for term in glossary if term not in terms and uses_term(reference, term)]
    return terms


def localized(answer: str, terms: Sequence[str]) -> bool | None:
    """Whether the answer uses every expected term; None when the example expects none."""
    return all(uses_term(answer, term) for term in terms) if terms else None


def score_answers(
    predictions: Sequence[str], references: Sequence[str], terms: Sequence[Sequence[str]]
) -> tuple[dict[str, float | None], list[dict[str, Any]]]:
    """The corpus metrics and each answer's own scores.

    Exact match, token F1 and ROUGE-L are means over the answers, chrF is corpus-level, and the localization
    score is the share of localized answers among the examples that expect local terms (None if none does).
    """
    if not (len(predictions) == len(references) == len(terms)):
        raise ValueError("predictions, references and terms must have the same length")
    em = [exact_match(p, r) for p, r in zip(predictions, references, strict=True)]
    f1 = [token_f1(p, r) for p, r in zip(predictions, references, strict=True)]
    rl = [rouge_l(p, r) for p, r in zip(predictions, references, strict=True)]
    local = [localized(p, t) for p, t in zip(predictions, terms, strict=True)]
    per_answer = [
        {
            EXACT_MATCH: em[i],
            TOKEN_F1: round(f1[i], 6),
            CHRF: round(sentence_chrf(predictions[i], references[i]), 6),
            ROUGE_L: round(rl[i], 6),
            "expected_terms": list(terms[i]),
            "localized": local[i],
        }
        for i in range(len(predictions))
    ]
    n = len(predictions)
    judged = [flag for flag in local if flag is not None]
    totals: dict[str, float | None] = {
        EXACT_MATCH: sum(em) / n if n else None,
        TOKEN_F1: sum(f1) / n if n else None,
        CHRF: chrf(predictions, references) if n else None,
        ROUGE_L: sum(rl) / n if n else None,
        LOCALIZATION_SCORE: sum(judged) / len(judged) if judged else None,
    }
    return {k: None if v is None else round(v, 6) for k, v in totals.items()}, per_answer
