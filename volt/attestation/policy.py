"""The reference policy: which measured-boot components a node may run.

A policy names components (firmware, bootloader, kernel, secure-boot state),
each read from the events of its PCRs, and for each the approved versions:
the exact sequence of event digests that version measures. Several versions
may be approved at once (a fleet mid-upgrade). A node passes when every
component's events equal one approved version's, and no event of a quoted
PCR is left unexplained. An unknown or invalid policy refuses every node:
refuse by default.

::

    {"name": "fleet-2026-11", "version": 3, "pcrs": [0, 4, 7, 9],
     "components": {
       "firmware":    {"pcrs": [0], "approved": [{"version": "2.3.1", "digests": ["ab.."]}]},
       "secure_boot": {"pcrs": [7], "approved": [{"version": "on", "digests": ["cd.."]}]},
       "bootloader":  {"pcrs": [4], "approved": [...]},
       "kernel":      {"pcrs": [9], "approved": [...]}}}
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from volt.attestation.event_log import EV_NO_ACTION, EV_SEPARATOR, EventLog
from volt.attestation.tpm2_structures import TPM_ALG_SHA256

Hex = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
Pcr = Annotated[int, msgspec.Meta(ge=0, le=23)]


class PolicyError(ValueError):
    """Not a valid policy: it approves nothing (refuse by default)."""


class ApprovedVersion(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    version: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    digests: list[Hex]
    """The SHA-256 digests of the component's events, in log order."""


class Component(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pcrs: Annotated[list[Pcr], msgspec.Meta(min_length=1)]
    approved: Annotated[list[ApprovedVersion], msgspec.Meta(min_length=1)]


class Policy(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    version: Annotated[int, msgspec.Meta(ge=1)]
    pcrs: Annotated[list[Pcr], msgspec.Meta(min_length=1)]
    """The PCRs a quote must cover."""
    components: Annotated[dict[str, Component], msgspec.Meta(min_length=1)]

    def __post_init__(self) -> None:
        covered = [pcr for component in self.components.values() for pcr in component.pcrs]
        if len(covered) != len(set(covered)):
            raise ValueError("a PCR belongs to two components")
        if set(covered) != set(self.pcrs):
            raise ValueError("the components must cover exactly the quoted PCRs")

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"


def load_policy(data: bytes | str) -> Policy:
    try:
        return msgspec.json.decode(data, type=Policy)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise PolicyError(f"invalid attestation policy: {exc}") from None


def component_digests(log: EventLog, pcrs: list[int]) -> list[str]:
    """The SHA-256 digests of the measurements in ``pcrs``, in log order."""
    return [event.digests[TPM_ALG_SHA256].hex() for event in log.events
            if event.pcr in pcrs and event.event_type not in (EV_NO_ACTION, EV_SEPARATOR)]


def evaluate(policy: Policy, log: EventLog) -> tuple[dict[str, str], dict[str, str]]:
    """(component -> approved version matched, component -> why nothing matched)."""
    matched, missed = {}, {}
    for name, component in policy.components.items():
        measured = component_digests(log, component.pcrs)
        version = next((a.version for a in component.approved if a.digests == measured), None)
        if version is None:
            missed[name] = (f"{len(measured)} measurements in PCR "
                            f"{','.join(map(str, component.pcrs))} match no approved version")
        else:
            matched[name] = version
    return matched, missed
