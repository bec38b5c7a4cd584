"""Greedy answers to many prompts at once in llama.cpp: one context with a sequence of its own for each prompt,
each prompt prefilled on its own, then one decode call a step for every answer still going (llama.cpp's batched
decoding, as its `batched` and `parallel` examples do it).

One prompt after the other, a GGUF check reads all the weights once for every token of every answer; here they
are read once a step for all the answers together, so on a CPU (memory-bound at one row) a step for 32 answers
costs little more than a step for one.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# llama.cpp gives each sequence n_ctx / n_seq_max cells and pads a context to this many.
_CELLS = 256


# Answers generated together in one context (one sequence each): the GGUF check asks for at most 32.
PARALLEL_ANSWERS = 32


@dataclass
class Answer:
    tokens: list[int] = field(default_factory=list)
    ended_turn: bool = False  # it generated a token that ends generation (end of turn, EOS)
    text: str = ""


class BatchedGreedy:
    """A context for `len(prompts)` answers of up to `max_new_tokens` each on a loaded `llama_cpp.Llama`."""

    def __init__(self, llm: Any, prompts: Sequence[Sequence[int]], max_new_tokens: int, threads: int) -> None:
        import llama_cpp

        self.lib, self.prompts, self.max_new_tokens = llama_cpp, prompts, max_new_tokens
        self.vocab = llama_cpp.llama_model_get_vocab(llm.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        longest = max(len(p) for p in prompts)
        per_sequence = -(-(longest + max_new_tokens) // _CELLS) * _CELLS
        # The loaded Llama's own settings (flash attention off, as llama-cpp-python sets it: the same answers as
        # its chat completion gives), sized for all the answers at once.
        params = type(llm.context_params).from_buffer_copy(llm.context_params)
        params.n_seq_max = len(prompts)
        params.n_ctx = per_sequence * len(prompts)
        params.n_batch = max(longest, len(prompts))
        params.n_ubatch = min(params.n_batch, 512)
        params.n_threads = params.n_threads_batch = threads
        params.no_perf = True
        self.ctx = llama_cpp.llama_init_from_model(llm.model, params)
        if not self.ctx:
            raise RuntimeError(f"llama.cpp could not make a context for {len(prompts)} answers of {per_sequence}")
        self.batch = llama_cpp.llama_batch_init(params.n_batch, 0, 1)

    def close(self) -> None:
        self.lib.llama_batch_free(self.batch)
        self.lib.llama_free(self.ctx)

    def _decode(self, rows: Sequence[tuple[int, int, int, bool]]) -> None:
        """One llama_decode of (token, position, sequence, wants logits) rows."""
        batch = self.batch
        batch.n_tokens = len(rows)
        for i, (token, position, sequence, logits) in enumerate(rows):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, position, 1, logits
            batch.seq_id[i][0] = sequence
        code = self.lib.llama_decode(self.ctx, batch)
        if code != 0:
            raise RuntimeError(f"llama_decode returned {code} for a batch of {len(rows)}")

    def _greedy(self, row: int) -> int:
        logits = self.lib.llama_get_logits_ith(self.ctx, row)
        return int(np.ctypeslib.as_array(ctypes.cast(logits, ctypes.POINTER(ctypes.c_float)), (self.n_vocab,)).argmax())

    def _take(self, answer: Answer, token: int) -> None:
        if self.lib.llama_vocab_is_eog(self.vocab, token):
            answer.ended_turn = True
        else:
            answer.tokens.append(token)

    def _done(self, answer: Answer) -> bool:
        return answer.ended_turn or len(answer.tokens) >= self.max_new_tokens

    def run(self, progress: Callable[[int], None] = lambda done: None) -> list[Answer]:
        """Every answer; `progress` is told how many are done after each step."""
        answers = [Answer() for _ in self.prompts]
        if self.max_new_tokens <= 0:
            return answers
        for sequence, prompt in enumerate(self.prompts):
            self._decode([(token, i, sequence, i == len(prompt) - 1) for i, token in enumerate(prompt)])
            self._take(answers[sequence], self._greedy(len(prompt) - 1))
        while going := [s for s, answer in enumerate(answers) if not self._done(answer)]:
            self._decode(
                [(answers[s].tokens[-1], len(self.prompts[s]) + len(answers[s].tokens) - 1, s, True) for s in going]
            )
            for row, s in enumerate(going):
                self._take(answers[s], self._greedy(row))
            progress(sum(self._done(answer) for answer in answers))
        return answers


def formatter(llm: Any) -> Any:
    """The chat formatter llama-cpp-python builds from the file's own template (a file has one: checked before)."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    def text_of(token: int) -> str:
        return llm.detokenize([token], special=True).decode("utf-8", errors="replace")

    template = llm.metadata["tokenizer.chat_template"]
    return Jinja2ChatFormatter(template, eos_token=text_of(llm.token_eos()), bos_token=text_of(llm.token_bos()))


def chat_answers(
    llm: Any,
    conversations: Sequence[Any],
    max_new_tokens: int,
    threads: int,
    progress: Callable[[int], None] = lambda done: None,
) -> list[Answer]:
    """Greedy answers to chat `conversations` through the file's template, PARALLEL_ANSWERS at a time: rendered
    and tokenized as create_chat_completion does it (the template writes <bos> itself), and written as it writes
    them (special tokens and broken UTF-8 dropped). `progress` is told how many are done."""
    render = formatter(llm)
    prompts = [llm.tokenize(render(messages=m).prompt.encode(), add_bos=False, special=True) for m in conversations]
    answers: list[Answer] = []
    for first in range(0, len(prompts), PARALLEL_ANSWERS):
        group = BatchedGreedy(llm, prompts[first : first + PARALLEL_ANSWERS], max_new_tokens, threads)

        def group_progress(done: int, before: int = len(answers)) -> None:
            progress(before + done)

        try:
            answers += group.run(group_progress)
        finally:
            group.close()
    for answer in answers:
        answer.text = llm.detokenize(answer.tokens).decode("utf-8", errors="ignore").strip()
    return answers
