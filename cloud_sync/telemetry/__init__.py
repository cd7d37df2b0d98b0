"""Telemetry: drain the spool to the cloud, over MQTT (``sink: mqtt``) or Kinesis (``sink: kinesis``).

`TelemetryFeature` picks the sink; `mqtt.MqttForwarder` and `kinesis.KinesisForwarder` do the
work (peek, send, ack on the sink's acknowledgement). The Kinesis path never imports paho.
"""

from __future__ import annotations

from typing import Any

from cloud_sync.feature import Context


def needs_mqtt(cfg: dict[str, Any]) -> bool:
    return cfg["sink"] == "mqtt"


class TelemetryFeature:
    name = "telemetry"

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.sink = ctx.cfg["sink"]
        self.forwarder: Any = None

    def start(self) -> None:
        if self.sink == "mqtt":
            from cloud_sync.telemetry.mqtt import MqttForwarder

            self.forwarder = MqttForwarder(self.ctx.spool, self.ctx.client)
        else:
            import boto3

            from cloud_sync.telemetry.kinesis import KinesisForwarder, KinesisSink

            k = self.ctx.cfg["kinesis"]
            client = boto3.client("kinesis", region_name=k["region"])
            self.forwarder = KinesisForwarder(self.ctx.spool, KinesisSink(client, k["stream_name"], self.ctx.thing))

    def step(self) -> int:
        if self.sink == "mqtt":
            return self.forwarder.step_sink()
        return self.forwarder.step()

    def stop(self) -> None:
        """Nothing to undo: what is in flight stays in the spool and goes again next run."""

    @property
    def delivered(self) -> int:
        return self.forwarder.delivered if self.forwarder is not None else 0

    def health(self) -> dict[str, Any]:
        return {"delivered_this_run": self.delivered}
