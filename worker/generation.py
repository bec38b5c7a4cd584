"""The worker's one generation loop: a model answers batches of conversations through its chat template.

The evaluation steps and the export's merged-model reference answers both use `Generator`. A test split is answered
longest prompt first (`by_length`), in batches of one size (`batch_rows`: as few as the largest batch allows, the
split shared out evenly). On CUDA each batch also has one of a few shapes: its prompts are left-padded to a width
bucket (64, 128, 256, ... tokens) and a short last batch is filled up with copies of its last prompt, whose answers
are dropped; a batch that fits a width already run takes that width (the evaluate step's inference prompts, shorter
than the test split's, reuse its shape). A compiled model (Unsloth's inference mode compiles for every new input
shape: 66-100 s a shape on the 4B model, docs/benchmarks.md) then compiles once per bucket instead of once per
batch. Padding is masked, so the answers are those of unpadded prompts; on a CPU, where nothing is compiled,
prompts are padded to their batch's longest only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

Conversation = list[dict[str, str]]

SMALLEST_BUCKET = 64  # tokens: the narrowest width a prompt is padded to with fixed shapes
GPU_BATCH = 64  # evaluation.batch_size "auto" on CUDA: prompts answered at once
CPU_BATCH = 8  # ... and on a CPU
LOSS_BATCH = 8  # the answer loss's batch with "auto": its logits (rows x tokens x vocabulary) dwarf a KV cache


def text_tokenizer(tokenizer: Any) -> Any:
    # A multimodal processor (Unsloth's Gemma 3 4B) carries its text tokenizer inside.
    return getattr(tokenizer, "tokenizer", tokenizer)


def stop_ids(tokenizer: Any, stop_word: str) -> list[int]:
    """The ids that end an answer: the EOS, and the template's end of turn (<end_of_turn>, <|eot_id|>, <|im_end|>)."""
    text = text_tokenizer(tokenizer)
    stops = [text.eos_token_id]
    end_of_turn = text.convert_tokens_to_ids(stop_word)
    if isinstance(end_of_turn, int) and end_of_turn != text.unk_token_id and end_of_turn not in stops:
        stops.append(end_of_turn)
    return [i for i in stops if i is not None]


def bucket(width: int) -> int:
    """The width a prompt of `width` tokens is padded to with fixed shapes: the next power of two from 64."""
    size = SMALLEST_BUCKET
    while size < width:
        size *= 2
    return size


def fixed_width(run: set[int], width: int) -> int:
    """The width a batch of prompts `width` tokens wide is padded to with fixed shapes: the narrowest of the widths
    already `run` that fits it (their kernels are compiled), else its bucket; recorded in `run`."""
    fitted = min((w for w in run if w >= width), default=bucket(width))
    run.add(fitted)
    return fitted


def batch_rows(total: int, largest: int) -> int:
    """Rows per batch for `total` prompts: as few batches as `largest` rows allow, all of one size (40 prompts at
    most 64 at once: one batch of 40; 200: four of 50)."""
    if total <= 0:
        return 1
    count = -(-total // largest)
    return -(-total // count)


def resolved_batch(setting: int | str, on_gpu: bool) -> int:
    """evaluation.batch_size: a number as given; "auto" 64 on CUDA, 8 on a CPU."""
    if isinstance(setting, int):
        return setting
    return GPU_BATCH if on_gpu else CPU_BATCH


def by_length(lengths: Sequence[int]) -> list[int]:
    """The order prompts are answered in: longest first (a batch that does not fit fails at once, not last), ties
    in file order."""
    return sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))


def answer_all(
    prompts: Sequence[Conversation],
    generate: Callable[[list[Conversation]], list[str]],
    batch_size: int,
    order: Sequence[int] | None = None,
    progress: Callable[[int, int], None] | None = None,
    counted: int | None = None,
) -> list[str]:
    """Each prompt's answer, in the prompts' order, asked batch by batch in `order` (default: theirs). After each
    batch `progress` is told how many of the first `counted` prompts (default: all) are answered."""
    order = list(range(len(prompts))) if order is None else list(order)
    counted = len(prompts) if counted is None else counted
    answered: dict[int, str] = {}
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        answers = generate([prompts[i] for i in batch])
        if len(answers) != len(batch):
            raise RuntimeError(f"generate returned {len(answers)} answers for {len(batch)} prompts")
        answered.update(zip(batch, answers, strict=True))
        if progress:
            progress(sum(1 for i in answered if i < counted), counted)
    if len(answered) != len(prompts):
        raise RuntimeError(f"{len(answered)} answers for {len(prompts)} prompts: `order` must list each once")
    return [answered[i] for i in range(len(prompts))]


class Generator:
    """Batched generation with the tokenizer's chat template: greedy, or sampled with `sampling` (temperature,
    top_p, top_k; reseeded with `seed` before each batch). Called with one batch of prompts, it returns one answer
    each, in order, and appends to `ended` whether each stopped on a stop id (True) or was cut at max_new_tokens.
    `fixed_shapes` (default: on CUDA) pads each batch to a width bucket and to `rows` prompts."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_new_tokens: int,
        stop_ids: Sequence[int],
        sampling: dict[str, Any] | None = None,
        seed: int = 0,
        rows: int = 1,
        fixed_shapes: bool | None = None,
    ) -> None:
        from transformers import GenerationConfig

        self.model, self.tokenizer, self.text = model, tokenizer, text_tokenizer(tokenizer)
        self.stops, self.sampling, self.seed, self.rows = list(stop_ids), sampling, seed, rows
        pad = self.text.pad_token_id if self.text.pad_token_id is not None else self.text.eos_token_id
        self.config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=sampling is not None,
            eos_token_id=self.stops,
            pad_token_id=pad,
            **(sampling or {}),
        )
        self.device = next(model.parameters()).device
        self.fixed_shapes = self.device.type == "cuda" if fixed_shapes is None else fixed_shapes
        self.ended: list[bool] = []
        self.widths: set[int] = set()  # the widths run with fixed shapes: their kernels are compiled
        self.generated_tokens = 0  # answer tokens of the real prompts, their stop token included
        self.seconds = 0.0  # spent in the model's generate

    def templated(self, prompts: Sequence[Conversation]) -> list[str]:
        return [self.tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]

    def lengths(self, prompts: Sequence[Conversation]) -> list[int]:
        """Each prompt's length in tokens, as generate sees it."""
        return [len(ids) for ids in self._encode(self.templated(prompts))]

    def _encode(self, texts: list[str]) -> list[list[int]]:
        return list(self.text(texts, add_special_tokens=False)["input_ids"]) if texts else []

    def __call__(self, prompts: list[Conversation]) -> list[str]:
        import torch

        real = len(prompts)
        ids = self._encode(self.templated(prompts))
        width = max(len(row) for row in ids)
        if self.fixed_shapes:
            ids += [ids[-1]] * max(0, self.rows - real)  # copies of the last prompt, their answers dropped
            width = fixed_width(self.widths, width)
        side, self.text.padding_side = self.text.padding_side, "left"  # a batch's answers all start at one column
        try:
            encoded = self.text.pad({"input_ids": ids}, padding="max_length", max_length=width, return_tensors="pt").to(
                self.device
            )
        finally:
            self.text.padding_side = side
        if self.sampling is not None:
            torch.manual_seed(self.seed)
        started = time.monotonic()
        with torch.inference_mode():
            output = self.model.generate(**encoded, generation_config=self.config)
        self.seconds += time.monotonic() - started
        new = output[:real, encoded["input_ids"].shape[1] :]
        stopped = torch.isin(new, torch.tensor(self.stops, device=new.device))
        self.ended.extend(bool(row) for row in stopped.any(dim=1).tolist())
        # Up to and including the first stop id: the rest of a row is padding while the batch goes on.
        first_stop = torch.where(stopped.any(dim=1), stopped.int().argmax(dim=1) + 1, new.shape[1])
        self.generated_tokens += int(first_stop.sum())
        return [self.text.decode(row, skip_special_tokens=True).strip() for row in new]

    def throughput(self) -> dict[str, Any]:
        """What the answers cost: generated tokens, seconds in generate, tokens per second."""
        rate = self.generated_tokens / self.seconds if self.seconds > 0 else None
        return {
            "generated_tokens": self.generated_tokens,
            "generate_seconds": round(self.seconds, 3),
            "tokens_per_second": None if rate is None else round(rate, 1),
            "batch_rows": self.rows,
            "fixed_shapes": self.fixed_shapes,
        }
