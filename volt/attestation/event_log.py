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


@dataclass(frozen=True, slots=True)
class Event:
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
        pcrs: dict[int, bytes] = {}
        for event in self.events:
            if event.event_type == EV_NO_ACTION:
                continue
            start = bytes(size)
            if event.pcr == 0 and self.startup_locality:
                start = bytes(size - 1) + bytes([self.startup_locality])
            current = pcrs.get(event.pcr, start)
            pcrs[event.pcr] = hashlib.new(HASHES[hash_alg],
                                          current + event.digests[hash_alg]).digest()
        return pcrs


class _LittleReader:
    def __init__(self, data: bytes) -> None:
        self.data, self.offset = data, 0

    def take(self, count: int) -> bytes:
        if count < 0 or self.offset + count > len(self.data):
            raise StructureError(f"event log truncated at byte {self.offset}")
        chunk = self.data[self.offset: self.offset + count]
        self.offset += count
        return chunk

    def u8(self) -> int:
        return int(self.take(1)[0])

    def u16(self) -> int:
        return int(struct.unpack("<H", self.take(2))[0])

    def u32(self) -> int:
        return int(struct.unpack("<I", self.take(4))[0])

    @property
    def left(self) -> int:
        return len(self.data) - self.offset


def parse(data: bytes) -> EventLog:
    reader = _LittleReader(data)
    # The first event, in the SHA-1 format, carries the Spec ID header.
    pcr, event_type = reader.u32(), reader.u32()
    reader.take(20)
    header = reader.take(reader.u32())
    if pcr != 0 or event_type != EV_NO_ACTION or not header.startswith(SPEC_ID_SIGNATURE):
        raise StructureError("not a crypto-agile event log (no Spec ID Event03 header)")
    spec = _LittleReader(header[len(SPEC_ID_SIGNATURE):])
    spec.take(4 + 1 + 1 + 1 + 1)  # platform class, version minor/major/errata, uintn size
    sizes = {}
    for _ in range(spec.u32()):
        algorithm, size = spec.u16(), spec.u16()
        sizes[algorithm] = size
    events, locality = [], 0
    while reader.left:
        pcr, event_type = reader.u32(), reader.u32()
        if pcr >= PCR_COUNT:
            raise StructureError(f"event for PCR {pcr}")
        digests = {}
        for _ in range(reader.u32()):
            algorithm = reader.u16()
            if algorithm not in sizes:
                raise StructureError(f"digest of an undeclared algorithm {algorithm:#x}")
            digests[algorithm] = reader.take(sizes[algorithm])
        if set(digests) != set(sizes):
            raise StructureError("an event lacks a digest of a declared algorithm")
        event_data = reader.take(reader.u32())
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
