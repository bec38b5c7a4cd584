"""The Ollama Modelfile of each supported chat template: its Go template renders a conversation as our Python
template does (BOS aside, which llama.cpp adds), and it stops at every token that ends a turn."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from transformers.utils.chat_template_utils import render_jinja_template

from app.datasets import templates
from tests.conftest import STAND_IN_TOKENS
from tests.worker.gguf.gotemplate import render
from worker.gguf.modelfile import END_OF_TURN, GO_TEMPLATES, modelfile, stop_tokens, write_modelfile

SYSTEM = {"role": "system", "content": "Answer in one word."}
USER = {"role": "user", "content": "What is the capital of France?"}
ANSWER = {"role": "assistant", "content": "Paris."}
FOLLOW_UP = {"role": "user", "content": "And of Italy?"}
# (conversation, add_generation_prompt): a training conversation, and prompts as Ollama's chat receives them.
CONVERSATIONS = [
    ([SYSTEM, USER, ANSWER], False),
    ([USER, ANSWER], False),
    ([SYSTEM, USER], True),
    ([USER], True),
    ([SYSTEM, USER, ANSWER, FOLLOW_UP], True),
]


# Each template's model's BOS and EOS (the stand-in tokenizers' for the models not installable here).
SPECIAL = {"gemma-3": {"bos": "<bos>", "eos": "<eos>"}} | {
    name: {"bos": tokens["bos"], "eos": tokens["eos"]} for name, tokens in STAND_IN_TOKENS.items()
}


def python_render(template: templates.ChatTemplate, conversation: list[dict[str, str]], generation: bool) -> str:
    """The conversation as our Python template renders it, in transformers' own Jinja environment."""
    special = SPECIAL[template.name]
    (text,), _ = render_jinja_template(
        conversations=[conversation],
        chat_template=template.jinja,
        add_generation_prompt=generation,
        bos_token=special["bos"],
        eos_token=special["eos"],
    )
    return str(text)


def ollama_data(conversation: list[dict[str, str]]) -> dict[str, Any]:
    """What Ollama executes a TEMPLATE on: every message, and the system messages joined as .System."""
    system = "\n\n".join(m["content"] for m in conversation if m["role"] == "system")
    return {"System": system, "Messages": [{"Role": m["role"], "Content": m["content"]} for m in conversation]}


@pytest.mark.parametrize("name", templates.NAMES)
def test_the_go_template_renders_each_conversation_as_the_python_template(name: str) -> None:
    template, bos = templates.TEMPLATES[name], SPECIAL[name]["bos"]
    for conversation, generation_prompt in CONVERSATIONS:
        python = python_render(template, conversation, generation_prompt)
        if bos:  # llama.cpp adds it, as the GGUF's tokenizer.ggml.add_bos_token says
            assert python.startswith(bos)
            python = python.removeprefix(bos)
        assert render(GO_TEMPLATES[name], ollama_data(conversation)) == python, conversation


@pytest.mark.parametrize("name", templates.NAMES)
def test_the_modelfile_stops_at_the_templates_end_of_turn_and_eos(name: str) -> None:
    template, eos = templates.TEMPLATES[name], SPECIAL[name]["eos"]
    text = modelfile(template, "model-Q8_0.gguf", eos_token=eos, num_ctx=1024)
    # The end of turn: the token the Python template writes right after an answer.
    after_answer = python_render(template, [USER, ANSWER], False).split(ANSWER["content"], 1)[1]
    end_of_turn = END_OF_TURN[name]
    assert after_answer.startswith(end_of_turn)
    stops = re.findall(r'^PARAMETER stop "(.*)"$', text, re.M)
    assert stops == stop_tokens(template, eos) and stops[0] == end_of_turn and eos in stops
    assert len(set(stops)) == len(stops)
    assert all(stop in template.control_tokens for stop in stops)  # tokens of the model, never plain text

    assert text.splitlines()[1] == "FROM ./model-Q8_0.gguf"
    (go,) = re.findall(r'^TEMPLATE """(.*?)"""$', text, re.M | re.S)
    assert go == GO_TEMPLATES[template.name]
    assert re.findall(r"^PARAMETER (num_ctx|temperature) (\S+)$", text, re.M) == [
        ("temperature", "0"),
        ("num_ctx", "1024"),
    ]


def test_a_modelfile_is_written_beside_its_gguf(tmp_path: Path) -> None:
    gguf = tmp_path / "model-Q4_K_M.gguf"
    path = write_modelfile(
        tmp_path / "model-Q4_K_M.Modelfile", templates.TEMPLATES["gemma-3"], gguf, eos_token="<eos>", num_ctx=256
    )
    assert path.read_text().splitlines()[1] == "FROM ./model-Q4_K_M.gguf"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model-Q4_K_M.Modelfile"]
