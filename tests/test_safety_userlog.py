"""A user mistake is one log line (escaped, no traceback); a bug keeps its traceback."""

from __future__ import annotations

import inspect
import logging

import pytest

from feedback import identity
from studio.userlog import log_user_error, user_errors


class Shown(Exception):
    """What the UI layer raises to show a message (gr.Error in the app)."""


def vote(name: str, token: str | None = None, request=None) -> str:
    return identity.typed(name, token).name


def test_a_user_mistake_is_one_escaped_line(caplog):
    caplog.set_level(logging.WARNING, logger="rlcm.studio")
    guarded = user_errors(vote, Shown)
    assert inspect.signature(guarded) == inspect.signature(vote)  # Gradio injects by annotation
    with pytest.raises(Shown) as e:
        guarded("hf:alice")
    assert "come only from signing in" in str(e.value)
    assert e.value.__cause__ is None and e.value.__suppress_context__
    with pytest.raises(Shown):
        guarded("bob\nINFO forged line", None)
    lines = caplog.text.splitlines()
    assert len(lines) == 2 and all("user error in vote: ValueError" in line for line in lines)
    assert "Traceback" not in caplog.text and all(r.exc_info is None for r in caplog.records)
    assert log_user_error(KeyError("no sample x"), "next_pair") == "no sample x"  # without KeyError's quotes


def test_a_bug_is_not_swallowed(caplog):
    def broken(name: str):
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        user_errors(broken, Shown)("x")
    assert caplog.records == []


def test_log_lines_are_escaped_and_bounded(caplog):
    caplog.set_level(logging.WARNING, logger="rlcm.studio")
    msg = log_user_error(ValueError("line one\nline two\x1b[31m" + "x" * 1000), "vote")
    assert msg.startswith("line one\nline two")  # the person sees the message as it is
    (line,) = caplog.text.splitlines()
    assert "\\n" in line and "\\x1b" in line and len(line) < 450
