"""The JSON-printing tail shared by the package CLIs (`python -m feedback`, `python -m reward_model`)."""

from __future__ import annotations

import json
import sys
from typing import Callable


def run_and_report(command: Callable[[], dict]) -> int:
    """Run `command`; print its result as JSON (exit 0), or a ValueError as `error: ...` on stderr (exit 2)."""
    try:
        out = command()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=2, default=str))
    return 0
