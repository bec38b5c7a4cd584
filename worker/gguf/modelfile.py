"""An Ollama Modelfile beside each GGUF: `ollama create <name> -f model-Q8_0.Modelfile`.

Ollama does not run the Jinja chat template inside a GGUF; it renders its own Go template (TEMPLATE), so each
supported chat template (app/datasets/templates.py) has its Go form here, written to render a conversation as
the Python template does (tests/worker/gguf/test_modelfile.py renders both). Where they differ, on purpose:
- no BOS token: llama.cpp adds it when it tokenizes the prompt, as the GGUF's `tokenizer.ggml.add_bos_token` says;
- contents are not trimmed (Go templates have no trim): the Python templates of gemma-3, llama-3.1 and
  mistral strip spaces around a message, Ollama sends it as written;
- only text turns: tool calls and images are not rendered.
The system prompt comes from the conversation (Ollama's `.System`); the file sets none of its own.
"""

from __future__ import annotations

from pathlib import Path

from app.datasets.templates import ChatTemplate
from app.files import write_text

# The token each template writes right after an assistant's answer: where a turn ends. Mistral's is its EOS.
END_OF_TURN = {"gemma-3": "<end_of_turn>", "llama-3.1": "<|eot_id|>", "mistral": "</s>", "qwen-2.5": "<|im_end|>"}

# `$last`: the conversation's last message; a generation prompt follows it when it is the user's.
GO_TEMPLATES = {
    # The system prompt opens the first user turn, the assistant speaks as `model`.
    "gemma-3": """\
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<start_of_turn>user
{{ if and $.System (eq $i 1) }}{{ $.System }}

{{ end }}{{ .Content }}<end_of_turn>
{{ if $last }}<start_of_turn>model
{{ end }}
{{- else if eq .Role "assistant" }}<start_of_turn>model
{{ .Content }}<end_of_turn>
{{ end }}
{{- end }}""",
    # Meta's dated system block opens every conversation, with or without a system prompt.
    "llama-3.1": """\
<|start_header_id|>system<|end_header_id|>

Cutting Knowledge Date: December 2023
Today Date: 26 Jul 2024

{{ $.System }}<|eot_id|>
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if or (eq .Role "user") (eq .Role "assistant") }}<|start_header_id|>{{ .Role }}<|end_header_id|>

{{ .Content }}<|eot_id|>
{{- end }}
{{- if and $last (eq .Role "user") }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- end }}""",
    # The system prompt goes before the last user message (one of the last two, as turns alternate).
    "mistral": """\
{{- range $i, $_ := .Messages }}
{{- if eq .Role "user" }}[INST] {{ if and $.System (le (len (slice $.Messages $i)) 2) }}{{ $.System }}

{{ end }}{{ .Content }}[/INST]
{{- else if eq .Role "assistant" }} {{ .Content }}</s>
{{- end }}
{{- end }}""",
    # ChatML, with Qwen's default system prompt when the conversation has none.
    "qwen-2.5": """\
<|im_start|>system
{{ if $.System }}{{ $.System }}{{ else -}}
You are Qwen, created by Alibaba Cloud. You are a helpful assistant.
{{- end }}<|im_end|>
{{ range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if or (eq .Role "user") (eq .Role "assistant") }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}
{{- if and $last (eq .Role "user") }}<|im_start|>assistant
{{ end }}
{{- end }}""",
}

# Greedy, as the quantization-verified gate answered: `ollama run` then gives the answers the gate scored.
DEFAULT_PARAMETERS = {"temperature": "0", "repeat_penalty": "1"}


def stop_tokens(template: ChatTemplate, eos_token: str | None) -> list[str]:
    """Every token that ends the model's turn: the template's end of turn, and the tokenizer's EOS."""
    return list(dict.fromkeys([END_OF_TURN[template.name], *([eos_token] if eos_token else [])]))


def modelfile(template: ChatTemplate, gguf_file: str, *, eos_token: str | None, num_ctx: int) -> str:
    """The Modelfile text for a GGUF beside it (`FROM ./<gguf_file>`, resolved by Ollama from the file's folder)."""
    lines = [
        f"# ollama create <name> -f {Path(gguf_file).stem}.Modelfile  (Forge Trainer, chat template {template.name})",
        f"FROM ./{gguf_file}",
        f'TEMPLATE """{GO_TEMPLATES[template.name]}"""',
        *(f'PARAMETER stop "{token}"' for token in stop_tokens(template, eos_token)),
        *(f"PARAMETER {key} {value}" for key, value in DEFAULT_PARAMETERS.items()),
        f"PARAMETER num_ctx {num_ctx}",  # the sequence length it was trained on: prompt and answer together
    ]
    return "\n".join(lines) + "\n"


def write_modelfile(
    path: Path, template: ChatTemplate, gguf_file: Path, *, eos_token: str | None, num_ctx: int
) -> Path:
    """`path` written for `gguf_file`, which must be in the same folder."""
    assert gguf_file.parent == path.parent, (gguf_file, path)
    write_text(path, modelfile(template, gguf_file.name, eos_token=eos_token, num_ctx=num_ctx))
    return path
