"""Record types the runtime emits and the cloud agent delivers.

Four kinds, with the fields of the mission brief plus the envelope every record carries:

* ``record_id``  uuid4 hex, unique; a sink that sees the same id twice drops the duplicate
  (delivery is at least once).
* ``device_id``  the thing name.
* ``session_id`` the ANC session the record belongs to.
* ``seq``        monotonic per device, also across restarts: microseconds since the epoch at
  creation, bumped by one when two records share a microsecond. It only goes backwards if
  the wall clock does (the device runs NTP); it orders records, ``record_id`` identifies them.
* ``kind``       "session" | "noise_detection" | "processing_metric" | "alarm_detection".
* ``created_at`` ISO-8601 UTC with milliseconds.

`RecordFactory` fills the envelope; the worker passes only the kind's own fields.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from device.contract.files import utc_now_iso

@dataclass(frozen=True)
class _Envelope:
    record_id: str
    device_id: str
    session_id: str
    seq: int
    created_at: str


@dataclass(frozen=True)
class SessionRecord(_Envelope):
    start_time: str
    end_time: str | None
    sample_rate: int
    anc_enabled: bool
    anc_intensity: float
    total_samples: int
    avg_cancellation_db: float | None
    status: str
    # A headphone's ears, each {avg_cancellation_db, watchdog_trips} by name; None for one ear.
    ears: dict[str, dict[str, Any]] | None = None
    kind: str = field(default="session")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)


@dataclass(frozen=True)
class NoiseDetectionRecord(_Envelope):
    timestamp: str
    noise_type: str
    confidence: float
    probabilities: dict[str, float]
    avg_power_db: float
    peak_frequency_hz: float
    kind: str = field(default="noise_detection")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)


@dataclass(frozen=True)
class ProcessingMetricRecord(_Envelope):
    timestamp: str
    latency_ms: float
    cpu_utilization: float
    memory_mb: float
    cancellation_db: float | None
    algorithm: str
    extras: dict[str, Any] = field(default_factory=dict)
    kind: str = field(default="processing_metric")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)


@dataclass(frozen=True)
class AlarmDetectionRecord(_Envelope):
    """A warning sound the runtime heard and let through (hear-through bypass)."""

    alarm_kind: str           # siren | smoke_alarm | low_frequency_alarm | reversing_beeper | car_horn
    start_time: str           # ISO-8601 UTC: onset of the sound
    end_time: str             # ISO-8601 UTC: last moment it was heard
    detected_s: float         # detection latency after the onset, s
    duration_s: float
    confidence: float         # 0..1
    level_dbfs: float         # peak level of the tone at the reference mic
    frequency_hz: float       # its frequency at detection
    kind: str = field(default="alarm_detection")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)


Record = SessionRecord | NoiseDetectionRecord | ProcessingMetricRecord | AlarmDetectionRecord
_BY_KIND = {"session": SessionRecord, "noise_detection": NoiseDetectionRecord,
            "processing_metric": ProcessingMetricRecord, "alarm_detection": AlarmDetectionRecord}
KINDS = tuple(_BY_KIND)
# What an outbox over its budget drops first: a lost metric costs a point on a chart, a lost
# session record a whole session; an alarm record is rare and says the wearer was warned.
DROP_ORDER = ("processing_metric", "noise_detection", "alarm_detection", "session")
if sorted(DROP_ORDER) != sorted(KINDS):
    raise ImportError("records: DROP_ORDER must name every record kind once")


def from_dict(data: dict[str, Any]) -> Record:
    """Rebuild a record from `to_dict()` output (the spool and the tests use this)."""
    cls = _BY_KIND[data["kind"]]
    return cls(**data)


class RecordFactory:
    """Makes records for one device and session; thread-safe sequence numbers."""

    def __init__(self, device_id: str, session_id: str | None = None, clock=time.time_ns):
        if not device_id:
            raise ValueError("device_id must be a non-empty thing name")
        self.device_id = device_id
        self.session_id = session_id or uuid.uuid4().hex
        self._clock = clock
        self._last_seq = 0
        self._lock = threading.Lock()

    def _envelope(self) -> dict[str, Any]:
        with self._lock:
            seq = max(self._last_seq + 1, self._clock() // 1000)
            self._last_seq = seq
        return {"record_id": uuid.uuid4().hex, "device_id": self.device_id,
                "session_id": self.session_id, "seq": seq, "created_at": utc_now_iso()}

    def session(self, **fields: Any) -> SessionRecord:
        return SessionRecord(**self._envelope(), **fields)

    def noise_detection(self, **fields: Any) -> NoiseDetectionRecord:
        fields.setdefault("timestamp", utc_now_iso())
        return NoiseDetectionRecord(**self._envelope(), **fields)

    def alarm_detection(self, **fields: Any) -> AlarmDetectionRecord:
        return AlarmDetectionRecord(**self._envelope(), **fields)

    def processing_metric(self, **fields: Any) -> ProcessingMetricRecord:
        fields.setdefault("timestamp", utc_now_iso())
        fields.setdefault("extras", {})
        return ProcessingMetricRecord(**self._envelope(), **fields)
