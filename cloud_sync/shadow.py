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
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable

from device.contract.control_channel import SETTINGS, read_reported, validate_settings, write_desired
from device.contract.errors import UserError

log = logging.getLogger(__name__)


def shadow_topic(thing: str, suffix: str) -> str:
    return f"$aws/things/{thing}/shadow/{suffix}"


def parse_delta(payload: bytes) -> tuple[dict[str, Any] | None, str | None, int | None]:
    """(settings to apply, rejection reason, version) from a delta or get/accepted payload."""
    try:
        document = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        return None, f"not JSON: {exc}", None
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
        log.info("shadow delta keys not handled by this agent: %s", ", ".join(unknown))
    try:
        return validate_settings(ours, "shadow delta"), None, version
    except UserError as exc:
        return None, str(exc), version


class ShadowSync:
    """Glue between the MQTT connection, the shadow topics and the local control channel."""

    def __init__(self, client, thing: str, state_dir, health: Callable[[], dict[str, Any]]):
        self.client, self.thing, self.state_dir, self.health = client, thing, state_dir, health
        self.applied: list[dict[str, Any]] = []
        self.rejected: list[str] = []
        self._last_rejected: dict[str, Any] | None = None
        client.subscribe(shadow_topic(thing, "update/delta"), self.on_delta)
        client.subscribe(shadow_topic(thing, "get/accepted"), self.on_delta)

    def on_connected(self) -> None:
        self.client.publish_json(shadow_topic(self.thing, "get"), {})

    def on_delta(self, topic: str, payload: bytes) -> None:
        settings, reason, version = parse_delta(payload)
        if reason is not None:
            log.warning("shadow delta rejected (version %s): %s", version, reason)
            self.rejected.append(reason)
            self._last_rejected = {"reason": reason, "version": version}
            self.report()
            return
        if settings:
            write_desired(self.state_dir, settings)
            self.applied.append(settings)
            log.info("shadow settings passed to the runtime: %s", settings)
            self.report(settings)

    def reported_state(self, just_applied: dict[str, Any] | None = None) -> dict[str, Any]:
        runtime = read_reported(self.state_dir) or {}
        state = {k: runtime[k] for k in SETTINGS if k in runtime}
        if just_applied:
            state.update(just_applied)  # handed to the runtime; its reported.json confirms later
        state["runtime"] = {k: v for k, v in runtime.items() if k not in SETTINGS}
        state["agent"] = self.health()
        state["last_rejected"] = self._last_rejected
        return state

    def report(self, just_applied: dict[str, Any] | None = None) -> None:
        self.client.publish_json(shadow_topic(self.thing, "update"),
                                 {"state": {"reported": self.reported_state(just_applied)}})
