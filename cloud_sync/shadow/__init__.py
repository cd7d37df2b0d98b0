"""Classic device shadow: apply validated ``desired`` settings, report state and health.

Topics (AWS IoT classic shadow, under the thing name):
``$aws/things/<thing>/shadow/update/delta`` (we subscribe), ``.../shadow/get/accepted``
(we subscribe and publish an empty ``.../shadow/get`` after each connect so changes made while
offline are applied), ``.../shadow/update`` (we publish ``reported``).

A delta is all or nothing: every field is validated (`device.contract.control_channel.validate_settings`);
if one is invalid nothing is applied, and ``reported.last_rejected`` says why, with the
shadow version, so the operator sees it in the console. Accepted settings go to the runtime
through the local control channel (desired.json); the runtime's own reported.json is copied
into ``reported`` together with the agent's health.

What an operator can send is bounded before it reaches a log line or the reported state: a
payload over `MAX_PAYLOAD_BYTES` (IoT Core's 128 KB message limit) or nested deeper than
`MAX_DEPTH` is rejected without being parsed further, a rejection reason is cut to
`REASON_LIMIT` characters, and unknown keys are logged as a count and the first few names.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable

from cloud_sync.feature import Context
from cloud_sync.redact import REASON_LIMIT, clip
from device.contract.control_channel import SETTINGS, read_reported, validate_settings, write_desired
from device.contract.errors import UserError

log = logging.getLogger(__name__)


def shadow_topic(thing: str, suffix: str) -> str:
    return f"$aws/things/{thing}/shadow/{suffix}"


MAX_PAYLOAD_BYTES = 128 * 1024
MAX_DEPTH = 16  # a shadow document allows 8 levels of nesting in desired; ours are flat
_UNKNOWN_SHOWN = 10


def _depth_over(payload: bytes, limit: int) -> bool:
    """True when brackets nest deeper than `limit` outside strings (checked before json.loads,
    which recurses once per level)."""
    depth, in_string, escaped = 0, False, False
    for byte in payload:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return False


def parse_delta(payload: bytes) -> tuple[dict[str, Any] | None, str | None, int | None]:
    """(settings to apply, rejection reason, version) from a delta or get/accepted payload.
    A reason is at most `REASON_LIMIT` characters whatever the payload."""
    settings, reason, version = _parse_delta(payload)
    return settings, None if reason is None else clip(reason, REASON_LIMIT - 50), version


def _parse_delta(payload: bytes) -> tuple[dict[str, Any] | None, str | None, int | None]:
    if len(payload) > MAX_PAYLOAD_BYTES:
        return None, f"payload of {len(payload)} bytes is over the {MAX_PAYLOAD_BYTES}-byte limit", None
    if _depth_over(payload, MAX_DEPTH):
        return None, f"JSON nested deeper than {MAX_DEPTH} levels", None
    try:
        document = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        return None, f"not JSON: {exc.__class__.__name__}: {clip(str(exc), 200)}", None
    if not isinstance(document, dict):
        return None, "not a JSON object", None
    version = document.get("version") if isinstance(document.get("version"), int) else None
    state = document.get("state")
    if isinstance(state, dict) and "desired" in state:  # get/accepted carries the full document
        desired, reported = state.get("desired") or {}, state.get("reported") or {}
        if not isinstance(desired, dict):
            return None, "state.desired is not an object", version
        state = {k: v for k, v in desired.items() if reported.get(k) != v}
    if not isinstance(state, dict):
        return None, "state is not an object", version
    # Only the settings we own; other desired keys (set by other tools) are not ours to judge.
    ours = {k: v for k, v in state.items() if k in SETTINGS}
    unknown = sorted(set(state) - set(SETTINGS))
    if unknown:
        shown = ", ".join(clip(str(key), 40) for key in unknown[:_UNKNOWN_SHOWN])
        more = f" and {len(unknown) - _UNKNOWN_SHOWN} more" if len(unknown) > _UNKNOWN_SHOWN else ""
        log.info("shadow delta: %d key(s) not handled by this agent: %s%s", len(unknown), shown, more)
    try:
        return validate_settings(ours, "shadow delta"), None, version
    except UserError as exc:
        return None, str(exc), version


def needs_mqtt(cfg: dict[str, Any]) -> bool:
    return True


class ShadowSync:
    """Glue between the MQTT connection, the shadow topics and the local control channel."""

    name = "shadow"

    def __init__(self, client, thing: str, state_dir, health: Callable[[], dict[str, Any]]):
        self.client, self.thing, self.state_dir, self.agent_health = client, thing, state_dir, health
        self.applied: list[dict[str, Any]] = []
        self.rejected: list[str] = []
        self._last_rejected: dict[str, Any] | None = None
        self._topics = (shadow_topic(thing, "update/delta"), shadow_topic(thing, "get/accepted"))

    @classmethod
    def from_context(cls, ctx: Context) -> "ShadowSync":
        return cls(ctx.client, ctx.thing, ctx.cfg["state_dir"], ctx.health)

    def start(self) -> None:
        for topic in self._topics:
            self.client.subscribe(topic, self.on_delta)
        self.client.add_connected_listener(self.on_connected)

    def step(self) -> int:
        return 0

    def stop(self) -> None:
        self.client.remove_connected_listener(self.on_connected)
        for topic in self._topics:
            self.client.unsubscribe(topic)

    def on_connected(self) -> None:
        self.client.publish_json(shadow_topic(self.thing, "get"), {})
        self.report()

    def on_delta(self, topic: str, payload: bytes) -> None:
        settings, reason, version = parse_delta(payload)
        if reason is not None:
            log.warning("shadow delta rejected (version %s): %s", version, reason)  # reason is clipped
            self.rejected.append(reason)
            self._last_rejected = {"reason": reason, "version": version}
            self.report()
            return
        if settings:
            write_desired(self.state_dir, settings)
            self.applied.append(settings)
            log.info("shadow settings passed to the runtime: %s", settings)
            self.report(settings)

    def health(self) -> dict[str, Any]:
        return {"shadow_applied": len(self.applied), "shadow_rejected": len(self.rejected)}

    def reported_state(self, just_applied: dict[str, Any] | None = None) -> dict[str, Any]:
        runtime = read_reported(self.state_dir) or {}
        state = {k: runtime[k] for k in SETTINGS if k in runtime}
        if just_applied:
            state.update(just_applied)  # handed to the runtime; its reported.json confirms later
        state["runtime"] = {k: v for k, v in runtime.items() if k not in SETTINGS}
        state["agent"] = self.agent_health()
        state["last_rejected"] = self._last_rejected
        return state

    def report(self, just_applied: dict[str, Any] | None = None) -> None:
        self.client.publish_json(shadow_topic(self.thing, "update"),
                                 {"state": {"reported": self.reported_state(just_applied)}})
