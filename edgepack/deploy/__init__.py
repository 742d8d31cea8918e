"""Deploy bundles to a device store: install, health-gated activation, rollback, removal.

The store layout and its guarantees are documented in docs/deployment.md. Every function here is
the Python API behind one `edgepack` command (`deploy`, `status`, `versions`, `rollback`, `remove`).
"""

import sys
import types

from edgepack.deploy.health import EXIT_ROLLED_BACK, HealthCheckFailed, HealthConfig, HealthResult
from edgepack.deploy.operations import ActivationResult, deploy, remove, rollback, status, versions

__all__ = [
    "EXIT_ROLLED_BACK", "ActivationResult", "HealthCheckFailed", "HealthConfig", "HealthResult",
    "deploy", "remove", "rollback", "status", "versions",
]


class _CallableModule(types.ModuleType):
    """`edgepack.deploy(bundle, device)` deploys: the package attribute `deploy` is this package, which calls deploy()."""

    def __call__(self, *args, **kwargs) -> ActivationResult:
        return deploy(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
