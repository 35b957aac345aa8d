"""User-facing errors: one clear paragraph instead of a traceback.

Code raises :class:`UserError` for anything a user can fix (a config value, a missing
file). The entry points turn it into a message on stderr and exit code 2;
``HYDRA_FULL_ERROR=1`` re-raises it for a full traceback when debugging.
"""

from __future__ import annotations

import contextlib
import os
import sys
import textwrap


class UserError(Exception):
    """A problem in the user's input, with the message that explains how to fix it."""


def format_error(message: str) -> str:
    body = "\n".join(textwrap.fill(p, 100) for p in str(message).split("\n"))
    return f"vaelab error: {body}"


@contextlib.contextmanager
def exit_on_user_error():
    try:
        yield
    except UserError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(format_error(str(err)), file=sys.stderr, flush=True)
        sys.exit(2)
