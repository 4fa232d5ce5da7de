"""The registry of static rules `vethtrace check` runs over a Topology.

Each rule is one small generator function in the module named for its area
(addresses, links, bridge, routing, arp), registered with `@rule(id, ...)`.
Rule ids are a public contract (users grep for them, scripts match on them,
lab scenarios list them): add new ones, never rename.
"""

from __future__ import annotations

# Importing the rule modules registers their rules.
from vethtrace.diagnose.rules import (  # noqa: F401
    addresses,
    arp,
    bridge,
    containers,
    links,
    overlay,
    paths,
    routing,
)
from vethtrace.diagnose.rules.base import RULES, Context, Rule, rule

__all__ = ["RULES", "Context", "Rule", "rule"]
