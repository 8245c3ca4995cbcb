"""``deltascope.check`` (this package: ``deltascope.checks``): gate a released checkpoint in CI with a policy.

    >>> import deltascope
    >>> result = deltascope.check(deltascope.demo_pair(), {"rules": [{"kind": "identical", "blocks": "embedding"}]},
    ...                           progress=False)
    >>> result.ok, result.violations
    (True, [])

A policy (TOML, JSON or a dict; schema in ``docs/check.md``) lists rules; a failed rule
is data (:class:`Violation`), not an exception. ``deltascope check`` on the command line
exits 0 when every rule passes, 1 on violations and 2 on errors.
"""

from __future__ import annotations

from .policy import Policy, PolicyRule, load_policy
from .rules import CheckResult, RuleResult, Violation, check

__all__ = ["check", "CheckResult", "RuleResult", "Violation", "Policy", "PolicyRule", "load_policy"]
