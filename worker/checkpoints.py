"""training.select_checkpoint: every evaluation point of the trainer (eval_steps, or each epoch's end, and the
last step) is a candidate checkpoint, scored on the validation split (never the test split) by gates.metric.
The best one's LoRA weights are loaded back after training, so the save, merge, evaluate and export steps all
use it; metrics/checkpoints.json records every score and the pick.

A loss metric (test_loss, perplexity) is scored by the eval_loss the trainer just computed on the validation
split; an answer metric by answers generated to the first validation rows (worker/generation.py).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from transformers import TrainerCallback

from app.datasets.templates import ChatTemplate
from app.files import write_json
from app.run_folder import RunFolder
from app.training_config import LOWER_IS_BETTER, PERPLEXITY, TrainingConfig
from worker import evaluation, ranks
from worker.backends import Backend
from worker.evaluation import TestExample
from worker.protocol import CheckpointSaved, Message

log = logging.getLogger("forge.worker.job")

# With an answer metric and evaluation.max_examples null: the validation rows answered at each candidate.
VALIDATION_ANSWERS = 32


def selection(config: TrainingConfig, has_validation: bool) -> Literal["last", "best"]:
    """training.select_checkpoint resolved: null is best when the job has a validation split."""
    chosen = config.training.select_checkpoint
    if chosen is None:
        return "best" if has_validation else "last"
    return chosen


def validation_examples(config: TrainingConfig, val: Path | None) -> list[TestExample]:
    """The validation rows an answer metric is scored on (none for a loss metric, or with select_checkpoint last)."""
    if val is None or selection(config, True) == "last" or config.gates.metric in LOWER_IS_BETTER:
        return []
    examples = evaluation.read_test_split(val, config.evaluation.terms_field)
    return examples[: config.evaluation.max_examples or VALIDATION_ANSWERS]


class CheckpointSelector(TrainerCallback):
    """Scores the model at each evaluation and keeps the best one's LoRA weights (run folder's best_weights)."""

    def __init__(
        self,
        config: TrainingConfig,
        folder: RunFolder,
        backend: Backend,
        tokenizer: Any,
        examples: list[TestExample],
        template: ChatTemplate,
        report: Callable[[Message], None],
        resumed: bool,
    ) -> None:
        self.config, self.folder, self.backend, self.tokenizer = config, folder, backend, tokenizer
        self.examples, self.template, self.report = examples, template, report
        self.metric = config.gates.metric
        self.lower = self.metric in LOWER_IS_BETTER
        self.scored: list[dict[str, Any]] = []  # {step, epoch, score}, in order
        self.best: dict[str, Any] | None = None
        if resumed and folder.checkpoints_report.is_file() and folder.best_weights.is_file():
            kept = json.loads(folder.checkpoints_report.read_text())
            self.scored = kept["checkpoints"]  # the first attempt's candidates, whose weights the file keeps
            self.best = next((c for c in self.scored if c["step"] == kept["picked_step"]), None)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # The model at the end of training is a candidate too, when the last step is not on an eval_steps boundary
        # (at each epoch's end the trainer evaluates anyway).
        if args.eval_strategy == "steps" and state.global_step >= state.max_steps:
            control.should_evaluate = True

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Any = None, **kwargs: Any) -> None:
        if not ranks.leader():  # rank 0 scores and keeps; the other ranks wait for it at the next step
            return
        model = kwargs["model"]
        step = int(state.global_step)
        # The last step as the only candidate (one epoch, no eval_steps: the spec's standard config) is the pick
        # whatever it scores; generating validation answers for it would only cost time. A loss costs nothing.
        only = not self.scored and step >= state.max_steps
        score = None if only and not self.lower else self.score(model, (metrics or {}).get("eval_loss"))
        entry: dict[str, Any] = {"step": step, "epoch": round(float(state.epoch or 0.0), 4), "score": score}
        self.scored = [c for c in self.scored if c["step"] != entry["step"]] + [entry]
        if only:
            self.best = entry  # the weights in the model now: nothing to keep aside
        elif score is not None and (self.best is None or self.better(score, self.best["score"])):
            self.best = entry
            self.keep(model)
        if only and score is None:
            log.info("checkpoint at step %d: the only candidate, picked without scoring", step)
        else:
            log.info("checkpoint at step %d: %s %s", step, self.metric, score)
        self.report(CheckpointSaved(step=step, metric=self.metric, score=score))
        self.write(last_step=None)

    def score(self, model: Any, eval_loss: float | None) -> float | None:
        if self.lower:
            if eval_loss is None or not math.isfinite(eval_loss):
                return None
            return round(math.exp(min(eval_loss, 700.0)) if self.metric == PERPLEXITY else eval_loss, 6)
        settings, seed = self.config.evaluation, self.config.training.seed
        self.backend.for_inference(model)
        try:
            _, metrics, _, _ = evaluation.answer(
                model, self.tokenizer, self.examples, settings, self.template.stop_word, seed
            )
        finally:
            self.backend.for_training(model, self.config)
        value = metrics.get(self.metric)
        return None if value is None else round(float(value), 6)

    def better(self, score: float, than: float) -> bool:
        return score < than if self.lower else score > than

    def keep(self, model: Any) -> None:
        import torch
        from peft import get_peft_model_state_dict

        weights = {k: v.detach().to("cpu", copy=True) for k, v in get_peft_model_state_dict(model).items()}
        self.folder.best_weights.parent.mkdir(parents=True, exist_ok=True)
        torch.save(weights, self.folder.best_weights)

    def pick(self, model: Any, last_step: int) -> dict[str, Any] | None:
        """After training (rank 0): the best checkpoint's weights loaded into `model` unless it is the last one;
        the pick for the job's result (None when nothing was scored)."""
        if self.best is None:
            log.info("select_checkpoint best: no checkpoint was scored; keeping the last weights")
            return None
        if self.best["step"] != last_step:
            import torch
            from peft import set_peft_model_state_dict

            weights = torch.load(self.folder.best_weights, map_location="cpu", weights_only=True)
            set_peft_model_state_dict(model, weights)
            log.info(
                "select_checkpoint best: step %d's weights, not the last step's (%d)", self.best["step"], last_step
            )
        self.write(last_step)
        return {"picked_step": self.best["step"], "metric": self.metric, "score": self.best["score"]}

    def write(self, last_step: int | None) -> None:
        best = self.best
        write_json(
            self.folder.checkpoints_report,
            {
                "metric": self.metric,
                "direction": "lower" if self.lower else "higher",
                "split": "validation",
                "examples": None if self.lower else len(self.examples),
                "checkpoints": self.scored,
                "picked_step": best["step"] if best else None,
                "picked_score": best["score"] if best else None,
                "last_step": last_step,
                "picked_last": None if last_step is None or best is None else best["step"] == last_step,
            },
        )
