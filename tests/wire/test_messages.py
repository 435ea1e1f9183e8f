"""Wire messages: round trips, typed errors for bad bytes, stored v1 bytes."""

from __future__ import annotations

import base64
import json
import types
import typing
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from volt import wire
from volt.wire import codec, messages

FAMILIES: dict[str, tuple[codec.FamilyDecoder[Any], tuple[type[Any], ...]]] = {
    "node": (wire.NODE, (wire.NodeHello, wire.Heartbeat, wire.NodeGoodbye,
                         wire.TrainProgress)),
    "scheduler": (
        wire.SCHEDULER, (wire.PlacementView, wire.ViewQuery, wire.PlaceQuery, wire.PlaceAnswer,
                         wire.NodeAssignment, wire.TrainStart, wire.TrainCancel,
                         wire.AdapterDrop)
    ),
    "inference": (wire.INFERENCE, (wire.InferenceRequest, wire.Cancel)),
    "reply": (wire.REPLY, (wire.StreamChunk, wire.EmbeddingChunk, wire.Final, wire.InferenceError)),
    "reply batch": (wire.REPLIES, (wire.ReplyBatch,)),
    "usage": (wire.USAGE, (wire.UsageBatch,)),
    "identity": (wire.IDENTITY, (wire.AuditBatch, wire.CredentialRevoked)),
    "attest": (wire.ATTEST, (wire.AttestEnroll, wire.EnrollChallenge, wire.EnrollProof,
                             wire.NonceRequest, wire.NonceAnswer, wire.AttestEvidence,
                             wire.AttestResult)),
    "forge": (wire.FORGE, (wire.LeaseCreate, wire.LeaseTerminate, wire.KubeconfigMint,
                           wire.KubeconfigRevoke, wire.AvailabilityQuery, wire.LeaseChanged,
                           wire.KubeconfigMinted, wire.AvailabilityAnswer, wire.ForgeRefused)),
    "vault": (wire.VAULT, (wire.RackReserve, wire.RackRelease, wire.RackChanged,
                           wire.AttestationReportQuery, wire.AttestationReportAnswer,
                           wire.VerifierKeysQuery, wire.VerifierKeysAnswer,
                           wire.TalosConfigQuery, wire.TalosConfigAnswer,
                           wire.RedfishCredentialMint, wire.RedfishCredentialMinted,
                           wire.RedfishCredentialRevoke, wire.VaultRefused)),
    "finetune": (wire.FINETUNE, (wire.FileRecord, wire.FileDelete, wire.FileChanged,
                                 wire.JobCreate, wire.JobCancel, wire.JobChanged,
                                 wire.ModelDelete, wire.ModelsDeleted, wire.FinetuneRefused)),
}

text = st.text(max_size=20)
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


def _strategy(tp: Any) -> st.SearchStrategy[Any]:
    """Values of a wire type, with ints kept in msgpack's range at every depth."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        fields = {
            f.name: _strategy(f.type) for f in msgspec.structs.fields(tp) if f.name != "v"
        }
        return st.builds(tp, **fields)
    if origin is list:
        return st.lists(_strategy(args[0]), max_size=4)
    if origin is dict:
        return st.dictionaries(_strategy(args[0]), _strategy(args[1]), max_size=4)
    if origin in (typing.Union, types.UnionType):
        return st.one_of([_strategy(arg) for arg in args])
    if origin is typing.Literal:
        return st.sampled_from(args)
    if tp is type(None):
        return st.none()
    if tp is float:
        return finite
    if tp is int:  # msgpack's range; no Volt producer comes near it
        return st.integers(min_value=-(2**63), max_value=2**63 - 1)
    if tp is str:
        return text
    return st.from_type(tp)


# Nested Structs (GpuInfo inside a list, ...) are drawn with the same rules.
for _cls in vars(messages).values():
    if (isinstance(_cls, type) and issubclass(_cls, msgspec.Struct)
            and _cls.__module__ == messages.__name__):
        st.register_type_strategy(_cls, st.deferred(lambda c=_cls: _strategy(c)))

ALL_MESSAGES = [cls for _, classes in FAMILIES.values() for cls in classes]


@pytest.mark.parametrize("cls", ALL_MESSAGES, ids=lambda c: c.__name__)
def test_every_message_round_trips(cls: type[Any]) -> None:
    family = next(dec for dec, classes in FAMILIES.values() if cls in classes)

    @given(_strategy(cls))
    def check(message: Any) -> None:
        assert family.decode(wire.encode(message)) == message

    check()


def test_every_wire_message_class_is_in_a_family() -> None:
    declared = {
        obj for obj in vars(messages).values()
        if isinstance(obj, type) and issubclass(obj, messages.WireMessage)
        and obj is not messages.WireMessage
    }
    assert declared == set(ALL_MESSAGES)


@given(st.binary(max_size=64))
def test_random_bytes_give_a_typed_error_never_a_crash(data: bytes) -> None:
    for decoder, _ in FAMILIES.values():
        try:
            decoder.decode(data)
        except wire.WireError:
            pass


def test_malformed_and_unknown_kinds_are_malformed() -> None:
    with pytest.raises(wire.MalformedMessage):
        wire.NODE.decode(b"\xc1")  # never valid msgpack
    with pytest.raises(wire.MalformedMessage):
        wire.NODE.decode(msgspec.msgpack.encode({"kind": "node.party", "node_id": "x"}))
    with pytest.raises(wire.MalformedMessage):
        # a reply is not a node message
        wire.NODE.decode(wire.encode(wire.Cancel(request_id="r")))


def test_unknown_version_is_its_own_error() -> None:
    newer = msgspec.msgpack.encode({"kind": "node.goodbye", "v": 2, "node_id": "n1"})
    with pytest.raises(wire.UnsupportedVersion):
        wire.NODE.decode(newer)
    # Even when the newer message would not validate against our types.
    stranger = msgspec.msgpack.encode({"kind": "node.heartbeat", "v": 3, "load": "high"})
    with pytest.raises(wire.UnsupportedVersion):
        wire.NODE.decode(stranger)


def test_decode_or_drop_counts_and_drops() -> None:
    counter = codec.DROPPED.labels("node", "malformed")
    before = counter._value.get()
    assert wire.NODE.decode_or_drop(b"garbage") is None
    assert counter._value.get() == before + 1


def test_unknown_fields_from_a_newer_minor_are_ignored() -> None:
    data = msgspec.msgpack.encode(
        {"kind": "node.goodbye", "v": 1, "node_id": "n1", "reason": "maintenance"}
    )
    assert wire.NODE.decode(data) == wire.NodeGoodbye(node_id="n1")


GOLDEN = Path(__file__).with_name("golden_v1.json")


def golden_messages() -> dict[str, Any]:
    """The v1 messages whose encoded bytes are stored in golden_v1.json."""
    load = wire.EngineLoad(running=2, waiting=1, kv_cache_usage=0.25)
    return {
        "hello": wire.NodeHello(node_id="fra-1", metro="fra", tier="standard",
                                models=["volt-tiny"], heartbeat_interval_s=2.0),
        "heartbeat": wire.Heartbeat(node_id="fra-1", metro="fra", tier="standard",
                                    models=["volt-tiny"], load=load, seq=7),
        "request": wire.InferenceRequest(request_id="abc", model="volt-tiny", stream=True,
                                         body=b'{"model":"volt-tiny"}', deadline_unix=1.5e9),
        "chunk": wire.StreamChunk(request_id="abc", seq=0,
                                  choices=[wire.ChoiceDelta(content="hi")]),
        "final": wire.Final(request_id="abc", pod="fra-1", metro="fra", tier="standard",
                            usage=wire.Usage(prompt_tokens=3, completion_tokens=2)),
    }


def test_messages_stored_by_v1_still_decode() -> None:
    """Bytes written by the first release must decode forever (schema evolution)."""
    stored = json.loads(GOLDEN.read_text())
    decoders = {"hello": wire.NODE, "heartbeat": wire.NODE, "request": wire.INFERENCE,
                "chunk": wire.REPLY, "final": wire.REPLY}
    expected = golden_messages()
    assert stored.keys() == expected.keys()
    for name, b64 in stored.items():
        assert decoders[name].decode(base64.b64decode(b64)) == expected[name], name


if __name__ == "__main__":  # regenerate only for a new wire version, never to make a test pass
    GOLDEN.write_text(json.dumps(
        {k: base64.b64encode(wire.encode(m)).decode() for k, m in golden_messages().items()},
        indent=2,
    ) + "\n")
