"""The errors edgepack raises on purpose, and the exit codes the CLI maps them to.

The base class lives in the runtime loader (which must not import edgepack) so that the loader's
errors and the compiler's share one shape: a problem, a fix and an exit code.
"""

from __future__ import annotations

from edgepack.runtime.bundle_format import EXIT_INTEGRITY, EXIT_INTERNAL, EXIT_USAGE, EXIT_USER, EXIT_VERIFY, BundleError, IntegrityError, VerificationError, first_line

__all__ = [
    "EXIT_INTEGRITY", "EXIT_INTERNAL", "EXIT_USAGE", "EXIT_USER", "EXIT_VERIFY",
    "BundleError", "EdgepackError", "first_line", "IntegrityError", "VerificationError", "InternalError",
]


class EdgepackError(BundleError):
    """Something the user can fix: names the problem and the fix (exit 1)."""


class InternalError(Exception):
    """A bug in edgepack, not in the user's input (exit 70)."""

    exit_code = EXIT_INTERNAL
