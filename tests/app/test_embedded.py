"""The embedded model's tokenizer, rebuilt from the GGUF, tokenizes as Gemma 3 does."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer


def test_embedded_tokenizer_matches_gemma3(tokenizer_dir: Path) -> None:
    """Token ids as Google's Gemma 3 tokenizer gives them, so prompts and templates mean the same thing."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    assert tokenizer("<start_of_turn>user\nHi<end_of_turn>\n")["input_ids"] == [
        2,
        105,
        2364,
        107,
        10979,
        106,
        107,
    ]
    assert tokenizer.tokenize("What is 5 + 3?") == ["What", "▁is", "▁", "5", "▁+", "▁", "3", "?"]
    assert tokenizer.convert_tokens_to_ids(["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"]) == [
        0,
        1,
        2,
        105,
        106,
    ]
