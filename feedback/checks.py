"""Checks of untrusted names and text shared by the store and the Parquet import (neither imports the other)."""

from __future__ import annotations

# longest generator / model name (and other short identifiers); rater names have their own limits in
# identity.py (MAX_RATER_NAME for typed names, MAX_STORED_RATER for any name the store keeps)
MAX_NAME = 100
MAX_CLIENT_ID = 200  # longest client-supplied submission id
MAX_PROMPT = 2000  # longest prompt in characters


def check_name(value, what: str, max_len: int = MAX_NAME) -> str:
    """A non-empty printable name of at most `max_len` characters, stripped; ValueError otherwise."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")
    value = value.strip()
    if len(value) > max_len or not value.isprintable():
        raise ValueError(f"{what} must be printable and at most {max_len} characters, got {value[:120]!r}")
    return value


def check_prompt(value, what: str = "prompt") -> str:
    """Like `check_name`, but newlines and tabs are allowed (real captions have them); at most MAX_PROMPT long."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")
    value = value.strip()
    if len(value) > MAX_PROMPT or not all(c.isprintable() or c in "\n\t\r" for c in value):
        raise ValueError(f"{what} must be printable text of at most {MAX_PROMPT} characters, got {value[:120]!r}")
    return value
