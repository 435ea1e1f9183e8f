"""Volt's own processes as SPIFFE IDs, and a process's bus identity.

    spiffe://<td>/node/<metro>/<node_id>     an agent
    spiffe://<td>/enrol/<metro>/<node_id>    an agent before its first passing attestation:
                                             it may only attest, and earns the node SVID
    spiffe://<td>/service/api/<replica_id>   an API replica
    spiffe://<td>/service/scheduler          the scheduler
    spiffe://<td>/service/nats               the bus itself (its server certificate)
    spiffe://<td>/operator/<name>            full access, for a person or tool debugging

A process on the secured bus takes its name from its certificate, never from a
setting that could disagree with it: the bus grants permissions by the
certificate, so a node configured as ``n2`` but holding ``n1``'s SVID would
otherwise publish as one and believe it is the other.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509

from volt.wire import subjects


def _segment(value: str) -> str:
    """A name in a workload ID. Node, replica and metro names also name bus
    subjects, so they obey the one rule for subject tokens (``subjects.token``)."""
    try:
        return subjects.token(value)
    except ValueError:
        raise ValueError(f"not a valid SPIFFE ID segment: {value!r}") from None


def _is_segment(value: str) -> bool:
    try:
        _segment(value)
    except ValueError:
        return False
    return True


def node_id(trust_domain: str, metro: str, node: str) -> str:
    return f"spiffe://{trust_domain}/node/{_segment(metro)}/{_segment(node)}"


def enrol_id(trust_domain: str, metro: str, node: str) -> str:
    return f"spiffe://{trust_domain}/enrol/{_segment(metro)}/{_segment(node)}"


def api_id(trust_domain: str, replica_id: str) -> str:
    return f"spiffe://{trust_domain}/service/api/{_segment(replica_id)}"


def scheduler_id(trust_domain: str) -> str:
    return f"spiffe://{trust_domain}/service/scheduler"


def bus_id(trust_domain: str) -> str:
    return f"spiffe://{trust_domain}/service/nats"


def operator_id(trust_domain: str, name: str) -> str:
    return f"spiffe://{trust_domain}/operator/{_segment(name)}"


@dataclass(frozen=True)
class WorkloadIdentity:
    """What a SPIFFE ID says about a Volt process."""

    role: str
    """``node``, ``enrol``, ``api``, ``scheduler``, ``nats`` or ``operator``."""
    name: str
    """The node, replica or operator name ('' for the scheduler and the bus)."""
    metro: str = ""


def parse_id(spiffe_id: str, trust_domain: str) -> WorkloadIdentity:
    """The role a Volt SPIFFE ID names; ValueError for anything else."""
    prefix = f"spiffe://{trust_domain}/"
    if not spiffe_id.startswith(prefix):
        raise ValueError(f"{spiffe_id!r} is not in trust domain {trust_domain}")
    parts = spiffe_id[len(prefix):].split("/")
    if not all(_is_segment(part) for part in parts):
        raise ValueError(f"{spiffe_id!r} is not a Volt workload ID")
    match parts:
        case ["node", metro, name]:
            return WorkloadIdentity("node", name, metro)
        case ["enrol", metro, name]:
            return WorkloadIdentity("enrol", name, metro)
        case ["service", "api", name]:
            return WorkloadIdentity("api", name)
        case ["service", "scheduler"]:
            return WorkloadIdentity("scheduler", "")
        case ["service", "nats"]:
            return WorkloadIdentity("nats", "")
        case ["operator", name]:
            return WorkloadIdentity("operator", name)
    raise ValueError(f"{spiffe_id!r} is not a Volt workload ID")


def spiffe_id_of(certificate_pem: bytes) -> str:
    """The one ``spiffe://`` URI SAN of an X.509-SVID (PEM)."""
    return spiffe_id_in(x509.load_pem_x509_certificate(certificate_pem))


def spiffe_id_in(certificate: x509.Certificate) -> str:
    """The one ``spiffe://`` URI SAN of an X.509-SVID; ValueError otherwise."""
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise ValueError("the certificate has no SPIFFE ID (no SAN)") from None
    uris = [uri for uri in san.get_values_for_type(x509.UniformResourceIdentifier)
            if uri.startswith("spiffe://")]
    if len(uris) != 1:
        raise ValueError(f"an X.509-SVID has exactly one SPIFFE ID, this one has {len(uris)}")
    return uris[0]
