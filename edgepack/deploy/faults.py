"""Test hook: `EDGEPACK_DEPLOY_FAULT=<step>` makes a deploy die (`os._exit(9)`) at that step.

It exists so that the fault tests can kill a deploy at a known point, as a power cut or `kill -9`
would. Steps, in the order a deploy reaches them: copy (after the first file is copied into
staging), stage (staging checked, before the rename), rename (renamed into versions/, before the
state records it), health (trial recorded, while the health check of versions/<new> runs and
`current` still names the active version), link (check passed, temporary link made, before the
swap), swap (link swapped, before the state records the new active version).
"""

from __future__ import annotations

import os

FAULT_ENV = "EDGEPACK_DEPLOY_FAULT"
STEPS = ("copy", "stage", "rename", "health", "link", "swap")
FAULT_EXIT = 9


def fault_point(step: str) -> None:
    """Exit at once, without cleanup, when the fault environment variable names this step."""
    if os.environ.get(FAULT_ENV) == step:
        os._exit(FAULT_EXIT)
