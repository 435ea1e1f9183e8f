"""``POST /v1/embeddings``: one answer, no stream.

The pod always gets base64 from its engine and sends the raw float32 bytes
(``EmbeddingChunk``, in parts that fit NATS messages); this module writes
them back as the client asked: floats, or OpenAI's base64.
"""

from __future__ import annotations

import base64
from array import array

import msgspec

from volt.control_api.inference import Reply
from volt.control_api.serving import Dispatcher, Job, JsonReply, decode_request
from volt.identity import Principal
from volt.protocol.embeddings import Embedding, EmbeddingList, EmbeddingRequest, EmbeddingUsage
from volt.wire import EmbeddingChunk

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(EmbeddingRequest)


def _floats(vector: bytes) -> list[float]:
    values = array("f")
    values.frombytes(vector)  # little-endian on every platform Volt runs on
    return values.tolist()


class Embeddings:
    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher

    async def create(self, body: bytes, arrived: float, principal: Principal) -> JsonReply:
        req = decode_request(_decoder, body)
        engine_request = msgspec.structs.replace(req, volt=None, encoding_format="base64")
        job = Job(
            endpoint="embeddings", model=req.model, stream=False,
            body=_encoder.encode(engine_request),
            query=self.dispatcher.query(req.model, req.volt, principal),
        )
        call = await self.dispatcher.start(job, arrived, principal)
        parts: list[Reply] = []
        final = await self.dispatcher.finish(call, parts)
        vectors: dict[int, bytes] = {}
        for part in parts:
            if isinstance(part, EmbeddingChunk):
                for offset, vector in enumerate(part.vectors):
                    vectors[part.first_index + offset] = vector
        as_base64 = req.encoding_format == "base64"
        data = [
            Embedding(index=index, embedding=(
                base64.b64encode(vectors[index]).decode() if as_base64
                else _floats(vectors[index])
            ))
            for index in sorted(vectors)
        ]
        tokens = final.usage.prompt_tokens
        reply = EmbeddingList(
            data=data, model=req.model,
            usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens),
            volt=self.dispatcher.volt_block(call, final, None),
        )
        return JsonReply(_encoder.encode(reply))


__all__ = ["Embeddings"]
