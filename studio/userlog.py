"""User mistakes in the server log: one line each (who did what wrong), never a traceback."""

from __future__ import annotations

import functools
import logging
from typing import Callable

USER_ERRORS = (ValueError, PermissionError, KeyError)  # bad input or no permission: the caller's mistake
MAX_LINE = 300  # characters of the message logged
log = logging.getLogger("rlcm.studio")


def user_message(exc: BaseException) -> str:
    """The message to show the person (str(KeyError) quotes itself)."""
    return str(exc).strip("'\"") or type(exc).__name__


def one_line(text: str, limit: int = MAX_LINE) -> str:
    """`text` with line breaks and control characters escaped (a name can't forge log lines), cut to `limit`."""
    out = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return out if len(out) <= limit else out[:limit] + "…"


def log_user_error(exc: BaseException, where: str = "") -> str:
    """Log `exc` as one warning line and return the message for the person."""
    msg = user_message(exc)
    log.warning("user error%s: %s: %s", f" in {where}" if where else "", type(exc).__name__, one_line(msg))
    return msg


def user_errors(fn: Callable, raise_as: Callable[[str], BaseException]) -> Callable:
    """`fn` with user mistakes logged in one line and re-raised as `raise_as(message)` without their chain.

    In the app: `user_errors(handler, lambda m: gr.Error(m, print_exception=False))` (gr.Error prints a
    traceback by default). Other exceptions (bugs) keep their traceback. The signature is kept, so Gradio
    still injects `gr.Request` / `gr.OAuthProfile` by annotation.
    """

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as e:
            raise raise_as(log_user_error(e, fn.__name__)) from None

    return wrapped
