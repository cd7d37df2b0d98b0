"""``anc-cloud-sync``: the store-and-forward agent (its own process and systemd unit).

    anc-cloud-sync run        [--config FILE]   drain the spool to IoT Core (or Kinesis), shadow, jobs
    anc-cloud-sync status     [--config FILE]   health: connected, backlog, oldest unsent age, drops
    anc-cloud-sync provision  [--config FILE] --serial SN [--param K=V ...]

The configuration (``config/cloud_sync.yaml``) is validated with the same strict validator as
the device configuration. ``run`` builds the features enabled in it (``telemetry``, ``shadow``,
``jobs``: `cloud_sync.feature.Feature`), opens the MQTT connection only if one of them needs it
(after checking the TLS identity: files, key mode, key/certificate pair, certificate issued for
``thing_name``), starts them, steps them in one loop that also services MQTT, and stops them in
reverse order. It writes its health to ``status_file`` every ``health_interval_s`` (and on exit),
and publishes it to ``anc/<thing>/health`` and the shadow's ``reported.agent``. Logs never
contain key material.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import re
import signal
import stat
import sys
import time
from pathlib import Path
from typing import Any


from cloud_sync.feature import Context, Feature
from cloud_sync.identity import check_identity, check_private_key
from device.contract.config import load_agent_config
from device.contract.files import utc_now_iso, write_json_atomic, write_text_atomic
from device.contract.errors import UserError

log = logging.getLogger("cloud_sync")



def _set_thing_name(config_path: Path, thing: str, cert: Path, key: Path) -> None:
    """Write the new identity into the config file, keeping its comments."""
    text = config_path.read_text()
    replacements = {r"^thing_name:[^#\n]*": f"thing_name: {thing}  ",
                    r"^(  cert_file:)[^#\n]*": rf"\g<1> {cert}  ",
                    r"^(  key_file:)[^#\n]*": rf"\g<1> {key}  "}
    for pattern, new in replacements.items():
        text = re.sub(pattern, new, text, count=1, flags=re.MULTILINE)
    # Keep the file's mode: it may be 0640 (root:anc) and must not become world-readable.
    write_text_atomic(config_path, text, stat.S_IMODE(config_path.stat().st_mode))


# -- run ------------------------------------------------------------------------------------------
# Start order; stopped in reverse. Provisioning is a command (`provision`), not a running feature.
FEATURES = ("telemetry", "shadow", "jobs", "recordings")


def _feature_module(name: str):
    import importlib

    return importlib.import_module(f"cloud_sync.{name}")


def _build_feature(name: str, ctx: Context) -> Feature:
    if name == "telemetry":
        from cloud_sync.telemetry import TelemetryFeature

        return TelemetryFeature(ctx)
    if name == "shadow":
        from cloud_sync.shadow import ShadowSync

        return ShadowSync.from_context(ctx)
    if name == "recordings":
        from cloud_sync.recordings import RecordingsFeature

        return RecordingsFeature(ctx)
    from cloud_sync.jobs import JobsAgent

    return JobsAgent.from_context(ctx)


class Agent:
    def __init__(self, cfg: dict[str, Any], rng: random.Random | None = None):
        from device.contract.spool import Spool

        if not cfg["thing_name"]:
            raise UserError(f"{cfg['_source']}: thing_name: not set (run `anc-cloud-sync provision`)")
        self.cfg = cfg
        self.thing = cfg["thing_name"]
        self.rng = rng or random.Random(int.from_bytes(os.urandom(8), "little"))
        self.stop = False
        self.client = None
        enabled = [name for name in FEATURES if cfg[name]["enabled"]]
        if any(_feature_module(name).needs_mqtt(cfg) for name in enabled):
            self._setup_mqtt()
        elif "recordings" in enabled:  # the credentials provider takes the same TLS identity
            m = cfg["mqtt"]
            check_identity(m["ca_file"], m["cert_file"], m["key_file"], self.thing)
        self.spool = Spool(cfg["spool_path"], int(cfg["spool_budget_mb"] * 2**20))
        ctx = Context(cfg=cfg, thing=self.thing, spool=self.spool, client=self.client, health=self.health,
                      rng=self.rng)
        self.features: list[Feature] = [_build_feature(name, ctx) for name in enabled]
        self._started: list[Feature] = []

    def feature(self, name: str) -> Feature | None:
        return next((f for f in self.features if f.name == name), None)

    def _setup_mqtt(self) -> None:
        from cloud_sync.mqtt import MqttClient, MqttSettings

        m = self.cfg["mqtt"]
        check_identity(m["ca_file"], m["cert_file"], m["key_file"], self.thing)
        settings = MqttSettings(host=m["endpoint"], port=m["port"], thing_name=self.thing, ca_file=m["ca_file"],
                                cert_file=m["cert_file"], key_file=m["key_file"], keepalive_s=m["keepalive_s"],
                                max_message_bytes=m["max_message_kb"] * 1024, max_records=m["max_records"],
                                max_inflight=m["max_inflight"], publish_rate=m["publish_rate"],
                                backoff_base_s=m["backoff_base_s"], backoff_cap_s=m["backoff_cap_s"])
        self.client = MqttClient(settings, rng=self.rng)

    def health(self) -> dict[str, Any]:
        stats = self.spool.stats()
        client = self.client
        health = {
            "connected": bool(client and client.connected),
            "sink": self.cfg["sink"],
            "features": [f.name for f in self.features],
            "backlog": stats["backlog"],
            "backlog_total": stats["backlog_total"],
            "oldest_unsent_age_s": stats["oldest_unsent_age_s"],
            "dropped": stats["dropped"],
            "dropped_oversize": stats["dropped_oversize"],
            "spool_file_bytes": stats.get("file_bytes"),
            "spool_budget_bytes": stats["budget_bytes"],
            "delivered_this_run": 0,
            "last_error": client.last_error if client else None,
            "connect_failures": client.stats["connect_failures"] if client else 0,
            "subscribe_failures": client.stats["subscribe_failures"] if client else 0,
            "refused_subscriptions": sorted(client.refused_subscriptions) if client else [],
            "updated_at": utc_now_iso(),
        }
        for feature in self.features:
            health.update(feature.health())
        return health

    def write_health(self) -> dict[str, Any]:
        health = self.health()
        write_json_atomic(Path(self.cfg["status_file"]), health)
        if self.client is not None and self.client.connected:
            from cloud_sync.mqtt import health_topic

            self.client.publish_json(health_topic(self.thing), health)
            shadow = self.feature("shadow")
            if shadow is not None:
                shadow.report()
        return health

    def start(self) -> None:
        for feature in self.features:
            feature.start()
            self._started.append(feature)
        log.info("anc-cloud-sync running for thing %s: %s (sink %s)", self.thing,
                 ", ".join(f.name for f in self.features) or "no features enabled", self.cfg["sink"])

    def stop_features(self) -> None:
        while self._started:
            feature = self._started.pop()
            try:
                feature.stop()
            except Exception as exc:  # the others must still stop
                log.error("stopping %s failed: %s: %s", feature.name, exc.__class__.__name__, exc)

    def run(self, max_seconds: float | None = None) -> None:
        started = time.monotonic()
        next_health = 0.0
        try:
            self.start()
            while not self.stop:
                if self.client is not None:
                    self.client.poll(0.01)
                moved = sum(feature.step() for feature in self.features)
                now = time.monotonic()
                if now >= next_health:
                    self.write_health()
                    next_health = now + self.cfg["health_interval_s"]
                if max_seconds is not None and now - started > max_seconds:
                    break
                if not moved and self.spool.stats()["backlog_total"] == 0:
                    time.sleep(0.05)  # idle: nothing queued; the runtime appends in batches
        finally:
            self.stop_features()
            self.write_health()
            if self.client is not None:
                self.client.close()
            self.spool.close()


# -- command line -------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anc-cloud-sync", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="agent config (default: config/cloud_sync.yaml)")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="drain the spool, apply shadow settings and jobs")
    run.add_argument("--seconds", type=float, default=None, help="stop after this long (tests, benches)")
    sub.add_parser("status", help="print the health as JSON")
    prov = sub.add_parser("provision", help="fleet provisioning by claim")
    prov.add_argument("--serial", required=True, help="serial number (template parameter SerialNumber)")
    prov.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="more template parameters")
    return parser


def _print(text: str) -> None:
    """Print to stdout; a reader that went away (``status | head``) is not an error."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        # Python would report the pipe again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_agent_config(args.config)
        if args.command == "run":
            agent = Agent(cfg)

            def stop(signum, frame):
                agent.stop = True

            signal.signal(signal.SIGTERM, stop)
            signal.signal(signal.SIGINT, stop)
            agent.run(args.seconds)
        elif args.command == "status":
            import json

            from device.contract.spool import Spool

            status_file = Path(cfg["status_file"])
            report = {"thing_name": cfg["thing_name"], "agent": None}
            if status_file.exists():
                report["agent"] = json.loads(status_file.read_text())
            spool = Spool(cfg["spool_path"], int(cfg["spool_budget_mb"] * 2**20))
            report["spool"] = spool.stats()
            spool.close()
            _print(json.dumps(report, indent=2, sort_keys=True))
        elif args.command == "provision":
            from cloud_sync.provisioning import ProvisioningSettings, provision

            if not cfg["provisioning"]["enabled"]:
                raise UserError(f"{cfg['_source']}: provisioning.enabled: false; set it to true to provision")
            check_private_key(cfg["provisioning"]["claim_key_file"], "claim key")
            params = {"SerialNumber": args.serial}
            for item in args.param:
                if "=" not in item:
                    raise UserError(f"--param: {item!r}: expected KEY=VALUE")
                key, value = item.split("=", 1)
                params[key] = value
            p, m = cfg["provisioning"], cfg["mqtt"]
            result = provision(ProvisioningSettings(
                endpoint=m["endpoint"], port=m["port"], ca_file=m["ca_file"], claim_cert_file=p["claim_cert_file"],
                claim_key_file=p["claim_key_file"], template_name=p["template_name"], parameters=params,
                credentials_dir=p["credentials_dir"], use_csr=p["use_csr"], timeout_s=p["timeout_s"]))
            _set_thing_name(Path(cfg["_source"]), result.thing_name, result.cert_file, result.key_file)
            _print(f"provisioned thing {result.thing_name}; certificate in {result.cert_file}; "
                  f"config {cfg['_source']} updated (restart anc-cloud-sync run to use the new identity)")
    except UserError as exc:
        print(f"anc-cloud-sync: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
