"""In-flight accounting: however a request ends, its pod slot, its reply channel
and its place in line are given back, exactly once.

One API component (router, admission, dispatcher, inference client) against a
real nats-server and a small pod that answers on the node's subject as an
agent does. Every case ends by checking every counter is zero.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from volt.control_api.admission import Admission
from volt.control_api.errors import PayloadTooLarge, ServiceUnavailable
from volt.control_api.inference import InferenceClient, ReplyChannel
from volt.control_api.routing import Router
from volt.control_api.serving import Dispatcher, Job, JsonReply, StreamReply
from volt.identity.principal import AuthMethod, Principal, Role, Scope
from volt.placement import PlacementQuery
from volt.up.nats_server import NatsServer
from volt.wire import (
    INFERENCE,
    Cancel,
    ChoiceDelta,
    Final,
    InferenceRequest,
    ModelCard,
    NodeView,
    PlacementView,
    StreamChunk,
    encode,
    subjects,
)

NODE = NodeView(node_id="n1", metro="fra", tier="standard", models=["m"], state="ready")
PRINCIPAL = Principal(org_id="org-1", org_name="acme", spiffe_id="spiffe://t/org/org-1/key/k",
                      method=AuthMethod.API_KEY, credential_id="k", role=Role.OWNER,
                      scopes=frozenset(Scope))


@dataclass
class Pod:
    """Answers requests on n1's subject: at once, or only when told to."""

    nc: Client
    hold: bool = False
    held: list[tuple[str, str]] = field(default_factory=list)
    """(request id, reply subject) of the requests it has not answered."""
    cancelled: list[str] = field(default_factory=list)

    async def start(self) -> None:
        await self.nc.subscribe(subjects.infer("fra", "n1"), cb=self._on_request)
        await self.nc.subscribe(subjects.cancel("fra", "n1"), cb=self._on_cancel)
        await self.nc.flush()

    async def _on_request(self, msg: Msg) -> None:
        request = INFERENCE.decode(msg.data)
        assert isinstance(request, InferenceRequest)
        if self.hold:
            self.held.append((request.request_id, msg.reply))
        else:
            await self.answer(request.request_id, msg.reply)

    async def _on_cancel(self, msg: Msg) -> None:
        cancel = INFERENCE.decode(msg.data)
        assert isinstance(cancel, Cancel)
        self.cancelled.append(cancel.request_id)

    async def answer(self, request_id: str, reply: str) -> None:
        await self.nc.publish(reply, encode(Final(
            request_id=request_id, pod="n1", metro="fra", tier="standard",
            choices=[ChoiceDelta(content="hi", finish_reason="stop")])))

    async def release_all(self) -> None:
        held, self.held = self.held, []
        for request_id, reply in held:
            await self.answer(request_id, reply)


@dataclass
class Api:
    nc: Client
    router: Router
    inference: InferenceClient
    admission: Admission
    dispatcher: Dispatcher

    def assert_idle(self) -> None:
        assert self.router.inflight == {}
        assert self.inference._channels == {}
        assert self.inference._by_node == {}
        assert self.admission._queues == {}


async def api_component(nc: Client, replica_id: str, timeout_s: float) -> Api:
    """The API's request path on ``nc``: one pod slot on node n1."""
    router = Router(max_inflight_per_pod=1, replica_id=replica_id)
    router.apply(PlacementView(scheduler_id="s", seq=1, nodes=[NODE],
                               models=[ModelCard(id="m", created=0)]))
    inference = InferenceClient(nc, replica_id)
    await inference.start()
    admission = Admission(queue_limit=8, per_tenant_limit=8)
    return Api(nc, router, inference, admission,
               Dispatcher(router, inference, timeout_s, admission))


@pytest.fixture
async def api(nats_server: NatsServer) -> AsyncIterator[Api]:
    nc = await nats.connect(nats_server.url)
    yield await api_component(nc, "api-1", 10.0)
    await nc.close()


@pytest.fixture
async def pod(nats_server: NatsServer) -> AsyncIterator[Pod]:
    pod = Pod(await nats.connect(nats_server.url))
    await pod.start()
    yield pod
    await pod.nc.close()


def job(body: bytes = b"{}") -> Job:
    return Job(endpoint="chat.completions", model="m", stream=False, body=body,
               query=PlacementQuery(model="m"))


STREAM_BODY = b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": true}'


async def held_stream(api: Api, pod: Pod) -> asyncio.Task[JsonReply | StreamReply]:
    """A streaming chat request the pod has received and holds unanswered."""
    from volt.control_api.chat import ChatCompletions

    pod.hold = True
    starting = asyncio.create_task(ChatCompletions(api.dispatcher).create(
        STREAM_BODY, time.perf_counter(), PRINCIPAL))
    while not pod.held:
        await asyncio.sleep(0.01)
    return starting


async def test_a_whole_request_gives_everything_back(api: Api, pod: Pod) -> None:
    call = await api.dispatcher.start(job(), time.perf_counter(), PRINCIPAL)
    final = await api.dispatcher.finish(call)
    assert final.choices[0].content == "hi"
    api.assert_idle()
    await api.dispatcher.close(call)  # a second close does nothing
    api.assert_idle()


async def test_a_publish_that_fails_gives_everything_back(api: Api, pod: Pod) -> None:
    too_big = b"x" * (api.nc.max_payload + 1)
    with pytest.raises(PayloadTooLarge):
        await api.dispatcher.start(job(too_big), time.perf_counter(), PRINCIPAL)
    api.assert_idle()
    # And while NATS is unreachable (a reconnect): the publish fails after the
    # slot was taken.
    await api.nc.close()
    with pytest.raises(Exception):  # noqa: B017 - nats-py's connection-closed error
        await api.dispatcher.start(job(), time.perf_counter(), PRINCIPAL)
    api.assert_idle()


async def test_a_request_across_a_nats_restart_gives_everything_back(
        nats_server: NatsServer, pod: Pod) -> None:
    nc = await nats.connect(nats_server.url, reconnect_time_wait=0.1, max_reconnect_attempts=-1)
    api = await api_component(nc, "api-2", 3.0)
    pod.hold = True
    pending = asyncio.create_task(api.dispatcher.start(job(), time.perf_counter(), PRINCIPAL))
    while not pod.held:
        await asyncio.sleep(0.01)
    nats_server.restart()  # the pod's answer is lost with the old connection
    with pytest.raises(Exception):  # noqa: B017 - the deadline passes: 504
        await pending
    api.assert_idle()
    await nc.close()


async def test_a_cancelled_waiter_and_a_cancelled_request_give_everything_back(
        api: Api, pod: Pod) -> None:
    pod.hold = True
    first = asyncio.create_task(api.dispatcher.start(job(), time.perf_counter(), PRINCIPAL))
    while not pod.held:
        await asyncio.sleep(0.01)
    # The pod's one slot is taken: the next request waits in line.
    second = asyncio.create_task(api.dispatcher.start(job(), time.perf_counter(), PRINCIPAL))
    while not api.admission._queues:
        await asyncio.sleep(0.01)
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second
    assert api.admission._queues == {}
    # The first is cancelled while waiting for its pod (its client left):
    # its slot comes back and the pod is told to stop.
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    api.assert_idle()
    await asyncio.sleep(0.2)
    assert len(pod.cancelled) == 1


async def test_a_stream_nobody_read_is_closed_by_its_reply(api: Api, pod: Pod) -> None:
    """A stream whose client left before its first event: the reply's close
    gives everything back and stops the pod (its generator never ran)."""
    starting = await held_stream(api, pod)
    await pod.release_all()  # the pod answers its first (and last) message
    reply = await starting
    assert api.router.inflight == {"n1": 1}
    await reply.close()  # what the HTTP layer does in its finally
    api.assert_idle()


async def test_no_pod_at_all_takes_nothing(api: Api) -> None:
    api.router.apply(PlacementView(scheduler_id="s", seq=2, nodes=[],
                                   models=[ModelCard(id="m", created=0)]))
    with pytest.raises(ServiceUnavailable):
        await api.dispatcher.start(job(), time.perf_counter(), PRINCIPAL)
    api.assert_idle()


async def test_a_stream_past_its_deadline_ends_with_504_and_gives_everything_back(
        nats_server: NatsServer, pod: Pod) -> None:
    """The deadline is one timer per request (not one per token): it still ends
    a stream whose pod went quiet mid-way, and every counter comes back."""
    nc = await nats.connect(nats_server.url)
    api = await api_component(nc, "api-3", 0.5)
    starting = await held_stream(api, pod)
    request_id, reply_subject = pod.held.pop()
    await pod.nc.publish(reply_subject, encode(StreamChunk(
        request_id=request_id, seq=0, choices=[ChoiceDelta(content="hel")])))
    reply = await starting
    assert isinstance(reply, StreamReply)
    events = [event async for event, _ in reply.events]  # then the pod says nothing more
    assert b'"content":"hel"' in events[0]
    assert b"deadline" in events[-1]
    assert events[-1].endswith(b"data: [DONE]\n\n")
    await reply.close()
    api.assert_idle()
    await nc.close()


async def test_a_reply_channel_has_one_deadline_timer() -> None:
    """No bus here: only the channel's own timer can end a wait."""
    loop = asyncio.get_running_loop()
    channel = ReplyChannel(loop)
    deadline = loop.time() + 0.2
    channel.put(Final(request_id="r1", pod="n1", metro="fra", tier="standard"))
    assert isinstance(await channel.get(deadline), Final)  # there already: no timer needed
    assert channel._timer is None
    with pytest.raises(TimeoutError):
        await channel.get(deadline)
    with pytest.raises(TimeoutError):  # still past it: at once, with no new timer
        await channel.get(deadline)
    assert channel._timer is None
    waiting = asyncio.create_task(channel.get(loop.time() + 60))
    await asyncio.sleep(0.01)
    timer = channel._timer
    assert timer is not None
    waiting.cancel()
    channel.close()
    assert timer.cancelled()
    assert channel._timer is None


async def test_forget_cancels_a_requests_deadline_timer(api: Api, pod: Pod) -> None:
    pod.hold = True  # the pod never answers: only the deadline would end the wait
    loop = asyncio.get_running_loop()
    channel = await api.inference.send(NODE, InferenceRequest(
        request_id="r1", endpoint="chat.completions", model="m", stream=True, body=b"{}",
        deadline_unix=time.time() + 60, tenant_id="org-1"))
    waiting = asyncio.create_task(channel.get(loop.time() + 60))
    await asyncio.sleep(0.01)
    assert not waiting.done(), waiting.result()  # what came, if something did
    timer = channel._timer
    assert timer is not None
    assert not timer.cancelled()
    waiting.cancel()
    api.inference.forget("r1")
    assert timer.cancelled()
    assert channel._timer is None
    api.assert_idle()
