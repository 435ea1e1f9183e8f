"""Placement: filter → score → pick, one package for both kinds of work.

- ``requests``: where a Spark request goes (the API routes every request
  with it from the scheduler's view; the scheduler answers
  ``volt.sched.place`` with the same policy).
- ``gpus``: where a Forge lease goes (gang, topology-aware, best fit; the
  scheduler places every lease with it).

Both decide from plain views (``volt.wire``) and the node states; neither
imports the scheduler's service or the API.
"""

from volt.placement.requests import (
    DEFAULT_POLICY,
    ROUTING,
    Decision,
    Filter,
    LocalLoad,
    PlacementQuery,
    Policy,
    Scorer,
    healthy,
    in_metro,
    in_tier,
    least_load,
    on_capacity,
    prefix_affinity,
    routing_policy,
    serves_model,
)

__all__ = [
    "DEFAULT_POLICY",
    "ROUTING",
    "Decision",
    "Filter",
    "LocalLoad",
    "PlacementQuery",
    "Policy",
    "Scorer",
    "healthy",
    "in_metro",
    "in_tier",
    "least_load",
    "on_capacity",
    "prefix_affinity",
    "routing_policy",
    "serves_model",
]
