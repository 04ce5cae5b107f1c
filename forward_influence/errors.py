"""User-facing errors.

Every problem a user can fix (a missing file, a bad flag, a document that is
too short) raises :class:`InputError` with a one-line message that names the
fix. The CLI prints that line to stderr and exits non-zero, with no traceback.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input from the user: the message is one line and names the fix."""
