"""What replicas share: one Redis carries credential invalidations, tenant events and stream replay.

With several replicas behind a load balancer, each process would otherwise only know what
happened inside itself: a key revoked through the CLI would keep working until every replica's
credential cache expired, a tool's `ctx.notify_*()` on replica 1 would never reach a listener on
replica 2, and a client could only resume an SSE stream from the memory of one process.

- Invalidations go to one channel, `{prefix}:auth`, that every replica subscribes to for its
  whole life; each message makes the authenticator drop the affected cache entries at once.
- Each tenant's events go to `{prefix}:tenant:{tenant id}:events`. A replica subscribes to a
  tenant's channel only while that tenant has listeners on it, and a message is only ever handed
  to the local listeners of the tenant whose channel it arrived on, after checking that its body
  names the same tenant.
- Stream events of each stateful session go to a capped, expiring Redis stream of their own
  (`SessionEventStore`).

Everything on the wire is JSON validated by pydantic models (never pickle): a message that does
not parse is dropped and logged. Redis being down degrades to what a single process does (the
credential-cache TTL still ends revoked keys; local listeners still get local events); it never
takes requests down with it.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

import anyio
from anyio.abc import TaskStatus
from mcp.server.streamable_http import EventCallback, EventId, EventMessage, EventStore, StreamId
from mcp.shared.subscriptions import (
    PromptsListChanged,
    ResourcesListChanged,
    ResourceUpdated,
    ServerEvent,
    ToolsListChanged,
)
from mcp_types.jsonrpc import JSONRPCMessage, jsonrpc_message_adapter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tenant_mcp.auth.invalidation import Invalidation
from tenant_mcp.errors import ConfigurationError, TenantMCPError, required

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub

logger = logging.getLogger("tenant_mcp.replication.redis")

DEFAULT_PREFIX = "tenant_mcp"
# No ':' (the separator), so no deployment's names can fall inside another's.
_PREFIX = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_MAX_MESSAGE_BYTES = 64 * 1024
_SETTLE_SECONDS = 2.0  # how long a new listener waits for its channel before going ahead anyway
_RETRY_SECONDS = 0.5


class BrokerError(TenantMCPError):
    """Redis could not be reached or refused a command."""


# -- names -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Names:
    """Channel and key names under one prefix, so deployments (and test workers) can share a Redis.

    Tenant ids, never slugs: a slug can be freed by deleting its tenant and taken by a new one,
    whose listeners must not inherit anything addressed to the old one.
    """

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not _PREFIX.fullmatch(self.prefix):
            raise ConfigurationError(
                f"Redis prefix {self.prefix!r}: use 1-64 letters, digits, '_', '.' or '-'"
            )

    @property
    def auth_channel(self) -> str:
        return f"{self.prefix}:auth"

    def events_channel(self, tenant_id: str) -> str:
        return f"{self.prefix}:tenant:{tenant_id}:events"

    def session_stream(self, tenant_id: str, session_key: str) -> str:
        return f"{self.prefix}:tenant:{tenant_id}:session:{session_key}"


# -- messages --------------------------------------------------------------------------------------


_EventKind = Literal[
    "tools_list_changed", "prompts_list_changed", "resources_list_changed", "resource_updated"
]
_KINDS: dict[type[Any], _EventKind] = {
    ToolsListChanged: "tools_list_changed",
    PromptsListChanged: "prompts_list_changed",
    ResourcesListChanged: "resources_list_changed",
    ResourceUpdated: "resource_updated",
}


class _TenantEvent(BaseModel):
    """The wire form of a `ServerEvent`: the SDK's events are bare dataclasses, and the three
    list-changed ones would all serialise to `{}`, so the kind is spelled out."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tenant_id: str = Field(min_length=1, max_length=200)
    origin: str = Field(min_length=1, max_length=64)
    kind: _EventKind
    uri: str | None = Field(default=None, max_length=8192)

    @model_validator(mode="after")
    def _uri_only_for_updates(self) -> _TenantEvent:
        if (self.kind == "resource_updated") != (self.uri is not None):
            raise ValueError("uri is required for resource_updated and only there")
        return self

    @classmethod
    def of(cls, tenant_id: str, origin: str, event: ServerEvent) -> _TenantEvent:
        uri = event.uri if isinstance(event, ResourceUpdated) else None
        return cls(tenant_id=tenant_id, origin=origin, kind=_KINDS[type(event)], uri=uri)

    def event(self) -> ServerEvent:
        if self.kind == "resource_updated":
            assert self.uri is not None
            return ResourceUpdated(uri=self.uri)
        return _LIST_CHANGED[self.kind]


_LIST_CHANGED: dict[str, ServerEvent] = {
    "tools_list_changed": ToolsListChanged(),
    "prompts_list_changed": PromptsListChanged(),
    "resources_list_changed": ResourcesListChanged(),
}


def _connect(url: str, name: str = "tenant_mcp") -> Redis:
    try:
        from redis.asyncio import Redis
    except ImportError:
        raise ConfigurationError(
            "Redis support needs the redis package: pip install 'tenant-mcp[redis]'"
        ) from None
    # Short timeouts for commands: a hung Redis must slow a request down, not hang it. The pub/sub
    # reader blocks without a timeout regardless (redis-py reads it with an infinite one).
    # The client name tells replicas apart in CLIENT LIST.
    return Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2, client_name=name)


async def check_reachable(url: str) -> None:
    """Raise `ConfigurationError` unless Redis answers at `url`: checked before serving, so a
    wrong URL is one clear line rather than a traceback from inside the server's startup."""
    client = _connect(url)
    from redis.exceptions import RedisError

    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        raise ConfigurationError(f"cannot reach Redis at {_without_password(url)}: {exc}") from exc
    finally:
        await client.aclose()


def _without_password(url: str) -> str:
    return re.sub(r"//[^@/]*@", "//***@", url)


async def publish_invalidation(url: str, invalidation: Invalidation, *, prefix: str = DEFAULT_PREFIX) -> int:
    """Tell every replica to drop what `invalidation` names; returns how many received it.

    For processes that do not serve (the CLI). Raises `BrokerError` when Redis cannot be reached:
    the change itself is already in the control plane, and replicas notice it within their
    credential-cache window anyway.
    """
    names = Names(prefix)
    client = _connect(url)
    from redis.exceptions import RedisError

    try:
        return int(await client.publish(names.auth_channel, invalidation.model_dump_json()))
    except (RedisError, OSError) as exc:
        raise BrokerError(f"cannot publish to Redis: {exc}") from exc
    finally:
        await client.aclose()


async def drop_tenant_data(url: str, tenant_id: str, *, prefix: str = DEFAULT_PREFIX) -> int:
    """Delete what Redis holds for a tenant (its sessions' stream events, tool results among
    them), so deleting a tenant leaves nothing of it to expire later; returns how many keys."""
    names = Names(prefix)
    client = _connect(url)
    from redis.exceptions import RedisError

    try:
        keys = [key async for key in client.scan_iter(match=names.session_stream(tenant_id, "*"))]
        return int(await client.unlink(*keys)) if keys else 0
    except (RedisError, OSError) as exc:
        raise BrokerError(f"cannot delete the tenant's data on Redis: {exc}") from exc
    finally:
        await client.aclose()


# -- the broker ------------------------------------------------------------------------------------

Invalidated = Callable[[Invalidation], None]
Deliver = Callable[[str, ServerEvent], Awaitable[None]]


class Broker:
    """One replica's connection to what the replicas share.

    `run` (started by `TenantMCP.running()`) holds one pub/sub connection: always subscribed to
    the invalidation channel, and to each tenant's event channel while `watch` holds it.
    `invalidated` and `deliver` are how messages get in: the authenticator's cache and the
    tenant bus's local listeners.
    """

    def __init__(
        self, url: str, *, prefix: str = DEFAULT_PREFIX, invalidated: Invalidated, deliver: Deliver
    ) -> None:
        self.url = url
        self.names = Names(prefix)
        self.origin = secrets.token_hex(8)  # this replica, so it skips the echo of its own events
        self._invalidated = invalidated
        self._deliver = deliver
        self._client: Redis | None = None
        self._pubsub: PubSub | None = None
        self._wanted: dict[str, str] = {}  # channel -> tenant id, for tenants with local listeners
        self._holds: dict[str, int] = {}  # tenant id -> number of watch() calls not yet released
        self._subscribed: set[str] = set()  # tenant channels we asked Redis for
        self._confirmed: dict[str, anyio.Event] = {}
        self._changed = anyio.Event()

    @property
    def client(self) -> Redis:
        return required(self._client, "the broker is not running", BrokerError)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Connect, subscribe to invalidations, then read until cancelled.

        Fails at start when Redis cannot be reached (a wrong URL should stop a deployment, not
        leave it silently single-process); later outages are logged and retried.
        """
        self._client = _connect(self.url, f"{self.names.prefix}:replica:{self.origin}")
        from redis.exceptions import RedisError

        self._pubsub = self._client.pubsub()
        try:
            try:
                await self._client.ping()
                await self._pubsub.subscribe(self.names.auth_channel)
            except (RedisError, OSError) as exc:
                raise ConfigurationError(
                    f"cannot reach Redis at {_without_password(self.url)}: {exc}"
                ) from exc
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._read)
                tg.start_soon(self._reconcile)
                task_status.started()
        finally:
            with anyio.CancelScope(shield=True):
                await self._pubsub.aclose()  # type: ignore[no-untyped-call]
                await self._client.aclose()
                self._client = self._pubsub = None

    # -- invalidations ---------------------------------------------------------------------------

    async def publish_invalidation(self, invalidation: Invalidation) -> None:
        """Drop what `invalidation` names here at once, and tell every other replica to."""
        from redis.exceptions import RedisError

        self._invalidated(invalidation)
        try:
            await self.client.publish(self.names.auth_channel, invalidation.model_dump_json())
        except (RedisError, OSError) as exc:
            logger.warning("could not publish an invalidation (other replicas fall back to the cache TTL): %s",
                           exc)  # fmt: skip

    # -- tenant events ---------------------------------------------------------------------------

    async def publish_event(self, tenant_id: str, event: ServerEvent) -> None:
        """Send `event` to the tenant's listeners on the other replicas (the caller has already
        delivered it to its own). Fire-and-forget like the SDK's bus: a failure is logged."""
        from redis.exceptions import RedisError

        data = _TenantEvent.of(tenant_id, self.origin, event).model_dump_json()
        try:
            await self.client.publish(self.names.events_channel(tenant_id), data)
        except (RedisError, OSError) as exc:
            logger.warning("could not publish an event to other replicas: %s", exc)

    def watch(self, tenant_id: str) -> None:
        """Receive the tenant's events until the matching `unwatch`."""
        self._holds[tenant_id] = self._holds.get(tenant_id, 0) + 1
        channel = self.names.events_channel(tenant_id)
        if channel not in self._wanted:
            self._wanted[channel] = tenant_id
            self._changed.set()

    def unwatch(self, tenant_id: str) -> None:
        self._holds[tenant_id] -= 1
        if self._holds[tenant_id]:
            return
        del self._holds[tenant_id]
        channel = self.names.events_channel(tenant_id)
        del self._wanted[channel]
        self._confirmed.pop(channel, None)
        self._changed.set()

    async def settled(self, tenant_id: str) -> None:
        """Wait (briefly) until Redis has confirmed the tenant's channel subscription, so an event
        published right after a listener is acknowledged is not missed."""
        channel = self.names.events_channel(tenant_id)
        if channel not in self._wanted:
            return
        confirmed = self._confirmed.setdefault(channel, anyio.Event())
        with anyio.move_on_after(_SETTLE_SECONDS) as scope:
            await confirmed.wait()
        if scope.cancelled_caught:
            logger.warning("Redis did not confirm a tenant channel within %s s", _SETTLE_SECONDS)

    async def _reconcile(self) -> None:
        """Bring the pub/sub connection's tenant channels in line with `_wanted`.

        One task does all (un)subscribing, in order, so a listener that comes and goes quickly
        cannot leave the replica subscribed to a tenant it no longer serves, or the reverse.
        """
        from redis.exceptions import RedisError

        assert self._pubsub is not None
        while True:
            await self._changed.wait()
            self._changed = anyio.Event()
            add = [c for c in self._wanted if c not in self._subscribed]
            drop = [c for c in self._subscribed if c not in self._wanted]
            try:
                if drop:
                    await self._pubsub.unsubscribe(*drop)
                    self._subscribed.difference_update(drop)
                if add:
                    await self._pubsub.subscribe(*add)
                    self._subscribed.update(add)
            except (RedisError, OSError) as exc:
                logger.warning("Redis subscription change failed, retrying: %s", exc)
                await anyio.sleep(_RETRY_SECONDS)
                self._changed.set()
            except Exception:  # whatever it is, this replica must keep serving
                logger.exception("Redis subscription change failed, retrying")
                await anyio.sleep(_RETRY_SECONDS)
                self._changed.set()

    async def _read(self) -> None:
        from redis.exceptions import RedisError

        assert self._pubsub is not None
        while True:
            try:
                message = await self._pubsub.get_message(timeout=None)
            except (RedisError, OSError) as exc:
                logger.warning("Redis connection lost, reconnecting: %s", exc)
                await anyio.sleep(_RETRY_SECONDS)
                continue
            except Exception:  # whatever it is, this replica must keep serving
                logger.exception("reading from Redis failed, retrying")
                await anyio.sleep(_RETRY_SECONDS)
                continue
            if message is not None:
                await self._handle(message)

    async def _handle(self, message: dict[str, Any]) -> None:
        """One pub/sub message. Nothing in here may raise: a bad message is dropped and logged."""
        channel = bytes(message.get("channel") or b"").decode(errors="replace")
        if message["type"] == "subscribe":
            if channel == self.names.auth_channel:
                # A first subscription or a reconnect: invalidations may have been missed meanwhile.
                self._invalidated(Invalidation(kind="all"))
            elif channel in self._wanted:
                self._confirmed.setdefault(channel, anyio.Event()).set()
            return
        if message["type"] != "message":
            return
        data = message["data"]
        if not isinstance(data, bytes) or len(data) > _MAX_MESSAGE_BYTES:
            logger.warning("dropped an oversized or non-binary message on %s", channel)
            return
        try:
            if channel == self.names.auth_channel:
                self._invalidated(Invalidation.model_validate_json(data))
                return
            tenant_id = self._wanted.get(channel)
            if tenant_id is None:
                return  # a channel we just left
            wire = _TenantEvent.model_validate_json(data)
            if wire.tenant_id != tenant_id:
                logger.warning("dropped an event on %s that names another tenant", channel)
                return
            if wire.origin != self.origin:  # our own events were delivered when published
                await self._deliver(tenant_id, wire.event())
        except ValidationError as exc:
            logger.warning("dropped a malformed message on %s: %s", channel, exc.errors(include_input=False))
        except Exception:  # a listener or cache bug must not stop this replica's reader
            logger.exception("handling a message on %s failed; dropped", channel)


# -- resumable streams -----------------------------------------------------------------------------

_EVENT_ID = re.compile(r"\d{1,20}-\d{1,20}")
_Entries = list[tuple[bytes, dict[bytes, bytes]]]  # XRANGE: (entry id, fields)
_UNSTORED = "unstored"  # handed out when Redis is down: it never matches, so nothing is replayed


class SessionEventStore(EventStore):
    """The events of one stateful session, kept on Redis so a client can resume a dropped SSE
    stream with `Last-Event-ID`.

    One store per session, never one for all: the SDK names streams after JSON-RPC request ids
    ("1", "2", ..., "_GET_stream"), which every session reuses, and a shared store would replay
    whatever stream an event id points at, another tenant's included. Here an event id is only
    looked up in its own session's Redis stream, so a foreign or made-up id replays nothing,
    exactly like an unknown one. The Redis stream is capped at `max_events` and expires
    `ttl_seconds` after its last event.
    """

    def __init__(
        self, broker: Broker, tenant_id: str, *, max_events: int = 1000, ttl_seconds: int = 3600
    ) -> None:
        self._broker = broker
        # A random key, not the Mcp-Session-Id: that id is a bearer secret and stays out of Redis.
        self.key = broker.names.session_stream(tenant_id, secrets.token_hex(16))
        self._max_events = max_events
        self._ttl = ttl_seconds

    async def store_event(self, stream_id: StreamId, message: JSONRPCMessage | None) -> EventId:
        from redis.exceptions import RedisError

        body = message.model_dump_json(by_alias=True, exclude_unset=True) if message is not None else ""
        try:
            async with self._broker.client.pipeline(transaction=True) as pipe:
                pipe.xadd(self.key, {"stream": stream_id, "message": body}, maxlen=self._max_events,
                          approximate=True)  # fmt: skip
                pipe.expire(self.key, self._ttl)
                event_id, _ = await pipe.execute()
        except (RedisError, OSError) as exc:
            # The session must go on; only resuming from this event is lost.
            logger.warning("could not store a stream event on Redis: %s", exc)
            return _UNSTORED
        return str(event_id.decode())

    async def replay_events_after(
        self, last_event_id: EventId, send_callback: EventCallback
    ) -> StreamId | None:
        from redis.exceptions import RedisError

        if not _EVENT_ID.fullmatch(last_event_id):
            return None
        client = self._broker.client
        try:
            found = cast(_Entries, await client.xrange(self.key, last_event_id, last_event_id, count=1))
            stream = found[0][1].get(b"stream") if found else None
            if stream is None:
                return None
            later = cast(_Entries, await client.xrange(self.key, "(" + last_event_id, "+"))
        except (RedisError, OSError) as exc:
            logger.warning("could not read stream events from Redis: %s", exc)
            return None
        for event_id, fields in later:
            body = fields.get(b"message")
            if fields.get(b"stream") != stream or not body:
                continue  # another stream of this session, or a priming event (no message)
            try:
                message = jsonrpc_message_adapter.validate_json(body)
            except ValidationError:
                logger.warning("skipped a malformed stored event in %s", self.key)
                continue
            await send_callback(EventMessage(message, event_id.decode()))
        return str(stream.decode())
