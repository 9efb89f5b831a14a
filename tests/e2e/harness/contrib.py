"""The repository's contrib/ files (operator settings) as the e2e fixtures use them.

Owns: reading a contrib file and replacing its example addresses with a test instance's, so
that the tests run the very snippets operators are told to use (contrib/README-s2s.md).  A
replacement whose example text is gone from the file is an error, not a silent no-op.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["CONTRIB", "contrib_text"]

CONTRIB = Path(__file__).resolve().parents[3] / "contrib"


def contrib_text(relpath: str, *subst: tuple[str, str]) -> str:
    """Text of ``contrib/<relpath>`` with each ``(old, new)`` replaced (all occurrences);
    ValueError if an ``old`` does not occur."""
    path = CONTRIB / relpath
    text = path.read_text()
    for old, new in subst:
        if old not in text:
            raise ValueError(f"{path} no longer contains {old!r}")
        text = text.replace(old, new)
    return text
