"""Spec-Bench prompts (question.jsonl) and SmolLM2's tokenizer (read from the same GGUF)."""
from __future__ import annotations

import json
from pathlib import Path

from specmoe.errors import InputError


def load_prompts(path, num: int | None = None, categories: list[str] | None = None) -> list[dict]:
    """[{question_id, category, text}] from Spec-Bench JSONL (first turn of each question)."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise InputError(path, "", "no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(path, "", f"unreadable ({e})") from None
    out = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            raise InputError(path, f"line {i}", "not valid JSON") from None
        turns = rec.get("turns") if isinstance(rec, dict) else None
        if not isinstance(turns, list) or not turns or not isinstance(turns[0], str):
            raise InputError(path, f"line {i}: turns", "expected a non-empty list of strings")
        if categories is None or rec.get("category") in categories:
            out.append({"question_id": rec.get("question_id", i), "category": rec.get("category", ""),
                        "text": turns[0]})
    if not out:
        raise InputError(path, "", "no prompts (after category filter)")
    return out[:num] if num else out


def load_tokenizer(gguf_path):
    """transformers' tokenizer built from the GGUF's own vocabulary and merges."""
    from transformers import AutoTokenizer
    gguf_path = Path(gguf_path)
    return AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)


def encode_chat(tok, text: str) -> list[int]:
    ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                  return_dict=False)
    return list(ids)
