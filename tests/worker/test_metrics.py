"""Each metric against values worked out by hand on small fixtures."""

from __future__ import annotations

import pytest

from worker import metrics


def test_normalize_drops_case_punctuation_and_extra_space() -> None:
    assert metrics.normalize("  Kofi PAYS  GH₵6. ") == "kofi pays gh₵6"
    assert metrics.normalize("Ｋｏｆｉ, ama!") == "kofi ama"  # NFKC folds full-width letters


def test_exact_match() -> None:
    assert metrics.exact_match("kofi pays gh₵6", "Kofi pays GH₵6.") == 1.0
    assert metrics.exact_match("Kofi pays GH₵7.", "Kofi pays GH₵6.") == 0.0


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        # 3 shared words; precision 3/3, recall 3/4 -> 2 * 1 * 0.75 / 1.75
        ("the cat sat", "the cat sat down", 6 / 7),
        # multiset overlap: one "a" and one "b" -> precision 2/3, recall 2/3
        ("a a b", "a b b", 2 / 3),
        ("Kofi pays GH₵6.", "kofi pays gh₵6", 1.0),
        ("nothing alike", "Kofi pays", 0.0),
        ("", "", 1.0),
        ("", "Kofi", 0.0),
    ],
)
def test_token_f1(prediction: str, reference: str, expected: float) -> None:
    assert metrics.token_f1(prediction, reference) == pytest.approx(expected)


def test_rouge_l_is_the_lcs_f_measure() -> None:
    # LCS "the cat on the mat" = 5 words; precision 5/6, recall 5/5 -> F = 10/11
    assert metrics.rouge_l("the cat sat on the mat", "the cat on the mat") == pytest.approx(10 / 11)
    assert metrics.rouge_l("a b", "c d") == 0.0


def test_chrf_sentence_and_corpus() -> None:
    # "ab" vs "abc": 1-grams P 2/2 R 2/3, 2-grams P 1/1 R 1/2, no 3-grams in the answer (order skipped).
    # Mean P 1, mean R 7/12; F-beta with beta 2: 5 * 7/12 / (4 + 7/12) = 7/11.
    assert metrics.sentence_chrf("ab", "abc") == pytest.approx(7 / 11)
    # Corpus statistics are summed first: 1-grams 3/3 and 3/4, 2-grams 1/1 and 1/2 -> R 5/8 -> 25/37.
    assert metrics.chrf(["ab", "x"], ["abc", "x"]) == pytest.approx(25 / 37)
    assert metrics.chrf(["Kofi pays GH₵6."], ["Kofi pays GH₵6."]) == pytest.approx(1.0)


def test_terms_respect_word_edges_and_case() -> None:
    assert metrics.uses_term("kofi paid gh₵ 6", "GH₵")
    assert metrics.uses_term("Kofi pays GH₵6.", "GH₵")  # no word edge after the cedi sign
    assert metrics.uses_term("In the western region.", "Western Region")
    assert not metrics.uses_term("Amanda pays", "Ama")
    assert not metrics.uses_term("xGH₵6", "GH₵")


def test_expected_terms_come_from_the_example_and_the_glossary() -> None:
    glossary = ["Kofi", "Ama", "GH₵", "Axim"]
    assert metrics.expected_terms("Kofi pays GH₵6.", glossary) == ["Kofi", "GH₵"]
    assert metrics.expected_terms("Kofi pays GH₵6.", glossary, listed=["cedis", "Kofi"]) == ["cedis", "Kofi", "GH₵"]
    assert metrics.expected_terms("It is 8.", glossary) == []


def test_score_answers_totals_and_localization() -> None:
    predictions = ["Kofi pays GH₵6.", "Kofi pays $6", "It is 9."]
    references = ["Kofi pays GH₵6.", "Kofi pays GH₵6.", "It is 8."]
    terms = [["Kofi", "GH₵"], ["Kofi", "GH₵"], []]
    totals, rows = metrics.score_answers(predictions, references, terms)
    assert totals["exact_match"] == pytest.approx(1 / 3, abs=1e-6)
    # Per answer: 1; "kofi pays 6" vs "kofi pays gh₵6" -> 2/3 each way -> 2/3; "it is 9" vs "it is 8" -> 2/3
    assert totals["token_f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3, abs=1e-6)
    # Two answers expect local terms and one of them uses them all; the third expects none and is not judged.
    assert totals["localization_score"] == 0.5
    assert [row["localized"] for row in rows] == [True, False, None]
    assert rows[0]["chrf"] == 1.0 and rows[0]["rouge_l"] == 1.0
    assert totals["chrf"] == pytest.approx(metrics.chrf(predictions, references), abs=1e-6)


def test_localization_score_is_none_without_terms() -> None:
    totals, _ = metrics.score_answers(["a"], ["a"], [[]])
    assert totals["localization_score"] is None and totals["exact_match"] == 1.0
