"""GGUF files broken on purpose: a copy with a few metadata bytes rewritten in place, by the GGUF format's own
layout (a key is its u64 length and bytes, then a u32 value type and the value; a string is its u64 length and
bytes), so the weights and every other byte stay as they were. (The gguf package's reader would do the same,
but parses each of a 262k-token vocabulary's strings in Python first: a minute per file.)"""

from __future__ import annotations

import mmap
import shutil
import struct
from pathlib import Path


def _key(name: str) -> bytes:
    import gguf

    return struct.pack("<Q", len(name)) + name.encode() + struct.pack("<I", gguf.GGUFValueType.UINT32)


def _only(data: mmap.mmap, needle: bytes, what: str) -> int | None:
    at = data.find(needle)
    assert at == -1 or data.find(needle, at + 1) == -1, f"{what} found twice"
    return None if at == -1 else at + len(needle)


def end_of_turn_that_does_not_stop(source: Path, target: Path, end_of_turn: str) -> Path:
    """A copy of `source` whose chat template ends turns with a token that no longer ends generation.

    The commonest export bug, made certain: llama.cpp finds the tokens that end generation by their text and by
    the EOS (and end-of-turn) ids, so the end-of-turn token is renamed in the vocabulary, in capitals (the
    template's `end_of_turn` is then no token of the file), and those ids moved to the padding token, which a
    model never generates. The weights are the same: a model that ended its turns now runs on to the limit.
    """
    import gguf

    shutil.copyfile(source, target)
    with target.open("r+b") as handle, mmap.mmap(handle.fileno(), 0) as data:
        token = struct.pack("<Q", len(end_of_turn.encode())) + end_of_turn.encode()
        at = _only(data, token, end_of_turn)
        assert at is not None, f"{end_of_turn} is not in the vocabulary of {source}"
        data[at - len(end_of_turn) : at] = end_of_turn.upper().encode()  # same length: the layout holds
        pad_at = _only(data, _key(gguf.Keys.Tokenizer.PAD_ID), "the padding id")
        assert pad_at is not None
        pad = data[pad_at : pad_at + 4]
        for key in (gguf.Keys.Tokenizer.EOS_ID, gguf.Keys.Tokenizer.EOT_ID, gguf.Keys.Tokenizer.EOM_ID):
            value_at = _only(data, _key(key), key)
            if value_at is not None:
                data[value_at : value_at + 4] = pad
        data.flush()
    return target
