"""The TCG2 measured-boot event log ("crypto agile" format), parsed and replayed.

On a real host the firmware writes it (``/sys/kernel/security/tpm0/
binary_bios_measurements``); every measurement extended into a PCR is one
event. Replaying the log — PCR[i] = H(PCR[i] || digest) for each event —
must give exactly the PCR values the TPM quoted, or the log lies.

Layout (TCG PC Client Platform Firmware Profile, 10.2; little-endian, unlike
TPM structures): a first event in the old SHA-1 format (``TCG_PCR_EVENT``,
``EV_NO_ACTION``) whose data is the "Spec ID Event03" header naming the
digest algorithms and their sizes; then ``TCG_PCR_EVENT2`` records, each
with one digest per algorithm. ``EV_NO_ACTION`` events are not extended; the
``StartupLocality`` one sets PCR 0's starting value to the locality.

``build`` writes the same format, for tests and for the benchmark.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from volt.attestation.tpm2_structures import HASHES, TPM_ALG_SHA256, StructureError

EV_NO_ACTION = 0x03
EV_SEPARATOR = 0x04
EV_S_CRTM_VERSION = 0x08
EV_IPL = 0x0D
EV_EFI_VARIABLE_DRIVER_CONFIG = 0x80000001
EV_EFI_BOOT_SERVICES_APPLICATION = 0x80000003
EV_EFI_PLATFORM_FIRMWARE_BLOB = 0x80000008
SPEC_ID_SIGNATURE = b"Spec ID Event03\0"
STARTUP_LOCALITY_SIGNATURE = b"StartupLocality\0"
PCR_COUNT = 24


class Event(NamedTuple):  # a tuple: logs hold thousands, parsed on every verification
    pcr: int
    event_type: int
    digests: dict[int, bytes]
    """Algorithm id -> digest."""
    data: bytes


@dataclass(frozen=True, slots=True)
class EventLog:
    digest_sizes: dict[int, int]
    events: tuple[Event, ...]
    startup_locality: int = 0

    def replay(self, hash_alg: int = TPM_ALG_SHA256) -> dict[int, bytes]:
        """The PCR values the log says the TPM must hold (only PCRs it touches)."""
        size = self.digest_sizes.get(hash_alg)
        if size is None:
            raise StructureError(f"the log has no digests of algorithm {hash_alg:#x}")
        digest = hashlib.sha256 if hash_alg == TPM_ALG_SHA256 else \
            (lambda data: hashlib.new(HASHES[hash_alg], data))
        pcrs: dict[int, bytes] = {}
        zero = bytes(size)
        for event in self.events:
            if event.event_type == EV_NO_ACTION:
                continue
            current = pcrs.get(event.pcr)
            if current is None:
                current = zero if event.pcr or not self.startup_locality else \
                    bytes(size - 1) + bytes([self.startup_locality])
            pcrs[event.pcr] = digest(current + event.digests[hash_alg]).digest()
        return pcrs


_HEAD = struct.Struct("<II")
_EVENT_HEAD = struct.Struct("<III")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")


def parse(data: bytes) -> EventLog:
    """Parse a log (offsets and ``unpack_from``: a node's log can hold thousands
    of events, and every verification parses it)."""
    try:
        return _parse(memoryview(data), len(data))
    except struct.error:
        raise StructureError("event log truncated") from None


def _parse(data: memoryview, end: int) -> EventLog:
    # The first event, in the SHA-1 format, carries the Spec ID header.
    pcr, event_type = _HEAD.unpack_from(data, 0)
    (header_size,) = _U32.unpack_from(data, 28)
    offset = 32 + header_size
    header = bytes(data[32:offset])
    if offset > end or pcr != 0 or event_type != EV_NO_ACTION \
            or not header.startswith(SPEC_ID_SIGNATURE):
        raise StructureError("not a crypto-agile event log (no Spec ID Event03 header)")
    spec = len(SPEC_ID_SIGNATURE) + 8  # platform class, versions, uintn size
    (count,) = _U32.unpack_from(header, spec)
    sizes = {}
    for index in range(count):
        algorithm, size = struct.unpack_from("<HH", header, spec + 4 + 4 * index)
        sizes[algorithm] = size
    events, locality = [], 0
    while offset < end:
        pcr, event_type, digest_count = _EVENT_HEAD.unpack_from(data, offset)
        offset += 12
        if pcr >= PCR_COUNT:
            raise StructureError(f"event for PCR {pcr}")
        digests = {}
        for _ in range(digest_count):
            (algorithm,) = _U16.unpack_from(data, offset)
            size = sizes.get(algorithm)
            if size is None:
                raise StructureError(f"digest of an undeclared algorithm {algorithm:#x}")
            stop = offset + 2 + size
            if stop > end:
                raise struct.error("digest past the end")
            digests[algorithm] = bytes(data[offset + 2: stop])
            offset = stop
        if len(digests) != len(sizes):
            raise StructureError("an event lacks a digest of a declared algorithm")
        (size,) = _U32.unpack_from(data, offset)
        stop = offset + 4 + size
        if stop > end:
            raise struct.error("event data past the end")
        event_data = bytes(data[offset + 4: stop])
        offset = stop
        if event_type == EV_NO_ACTION and event_data.startswith(STARTUP_LOCALITY_SIGNATURE):
            locality = event_data[len(STARTUP_LOCALITY_SIGNATURE)]
        events.append(Event(pcr, event_type, digests, event_data))
    return EventLog(sizes, tuple(events), locality)


def build(events: Iterable[tuple[int, int, bytes]]) -> tuple[bytes, list[Event]]:
    """A SHA-256 crypto-agile log of ``(pcr, event type, data)`` measurements,
    each event's digest the SHA-256 of its data: (the log's bytes, the events)."""
    spec = (SPEC_ID_SIGNATURE + struct.pack("<IBBBB", 0, 0, 2, 0, 2)
            + struct.pack("<I", 1) + struct.pack("<HH", TPM_ALG_SHA256, 32) + b"\0")
    out = [struct.pack("<II", 0, EV_NO_ACTION), bytes(20), struct.pack("<I", len(spec)), spec]
    made = []
    for pcr, event_type, data in events:
        digest = hashlib.sha256(data).digest()
        out += [struct.pack("<IIIH", pcr, event_type, 1, TPM_ALG_SHA256), digest,
                struct.pack("<I", len(data)), data]
        made.append(Event(pcr, event_type, {TPM_ALG_SHA256: digest}, data))
    return b"".join(out), made
