"""``anc-cloud-sync``: the store-and-forward agent (its own process and systemd unit).

    anc-cloud-sync run        [--config FILE]   drain the spool to IoT Core (or Kinesis), shadow, jobs
    anc-cloud-sync status     [--config FILE]   health: connected, backlog, oldest unsent age, drops
    anc-cloud-sync provision  [--config FILE] --serial SN [--param K=V ...]

The configuration (``config/cloud_sync.yaml``) is validated with the same strict validator as
the device configuration. ``run`` refuses a private key readable by group or others, writes its
health to ``status_file`` every ``health_interval_s`` (and on exit), and publishes it to
``anc/<thing>/health`` and the shadow's ``reported.agent``. Logs never contain key material.
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

import yaml

from device.contract.config import load_agent_config
from device.contract.files import utc_now_iso, write_json_atomic, write_text_atomic
from device.contract.errors import ConfigError, UserError

log = logging.getLogger("cloud_sync")

def check_private_key(path: str | Path) -> None:
    """Refuse a missing key or one that group or others can read (AWS and ssh convention: 0600)."""
    path = Path(path)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        raise UserError(f"{path}: private key not found (run `anc-cloud-sync provision` first)") from None
    if mode & 0o077:
        raise UserError(f"{path}: private key is readable by others (mode {mode:04o}); run chmod 600 {path}")


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
class Agent:
    def __init__(self, cfg: dict[str, Any], rng: random.Random | None = None):
        from device.contract.spool import Spool

        if not cfg["thing_name"]:
            raise UserError(f"{cfg['_source']}: thing_name: not set (run `anc-cloud-sync provision`)")
        self.cfg = cfg
        self.thing = cfg["thing_name"]
        self.spool = Spool(cfg["spool_path"], int(cfg["spool_budget_mb"] * 2**20))
        self.rng = rng or random.Random(int.from_bytes(os.urandom(8), "little"))
        self.stop = False
        self.client = None
        self.forwarder = None
        self.kinesis = None
        self.shadow = None
        self.jobs = None
        self._setup_mqtt()  # shadow and jobs need the MQTT connection whichever sink carries records
        if cfg["sink"] == "kinesis":
            self._setup_kinesis()

    def _setup_mqtt(self) -> None:
        from cloud_sync.jobs import JobsAgent, install_model
        from cloud_sync.mqtt import MqttClient, MqttForwarder, MqttSettings
        from cloud_sync.shadow import ShadowSync

        m = self.cfg["mqtt"]
        check_private_key(m["key_file"])
        settings = MqttSettings(host=m["endpoint"], port=m["port"], thing_name=self.thing, ca_file=m["ca_file"],
                                cert_file=m["cert_file"], key_file=m["key_file"], keepalive_s=m["keepalive_s"],
                                max_message_bytes=m["max_message_kb"] * 1024, max_records=m["max_records"],
                                max_inflight=m["max_inflight"], publish_rate=m["publish_rate"],
                                backoff_base_s=m["backoff_base_s"], backoff_cap_s=m["backoff_cap_s"])
        self.client = MqttClient(settings, rng=self.rng)
        if self.cfg["sink"] == "mqtt":
            self.forwarder = MqttForwarder(self.spool, self.client)
        self.shadow = ShadowSync(self.client, self.thing, self.cfg["state_dir"], self.health)
        jobs = self.cfg["jobs"]
        public_key = Path(jobs["public_key_file"]).read_bytes() if jobs["public_key_file"] else None
        self.jobs = JobsAgent(self.client, self.thing, lambda document: install_model(
            document, Path(jobs["models_dir"]), Path(self.cfg["state_dir"]), public_key_pem=public_key))

        def connected() -> None:
            self.shadow.on_connected()
            self.jobs.on_connected()
            self.shadow.report()

        self.client.on_connected = connected

    def _setup_kinesis(self) -> None:
        import boto3

        from cloud_sync.kinesis import KinesisForwarder, KinesisSink

        k = self.cfg["kinesis"]
        client = boto3.client("kinesis", region_name=k["region"])
        self.kinesis = KinesisForwarder(self.spool, KinesisSink(client, k["stream_name"], self.thing))

    def health(self) -> dict[str, Any]:
        stats = self.spool.stats()
        delivered = (self.forwarder.delivered if self.forwarder else 0) + (self.kinesis.delivered if self.kinesis else 0)
        return {
            "connected": bool(self.client and self.client.connected),
            "sink": self.cfg["sink"],
            "backlog": stats["backlog"],
            "backlog_total": stats["backlog_total"],
            "oldest_unsent_age_s": stats["oldest_unsent_age_s"],
            "dropped": stats["dropped"],
            "dropped_oversize": stats["dropped_oversize"],
            "delivered_this_run": delivered,
            "last_error": self.client.last_error if self.client else None,
            "updated_at": utc_now_iso(),
        }

    def write_health(self) -> dict[str, Any]:
        health = self.health()
        write_json_atomic(Path(self.cfg["status_file"]), health)
        if self.client is not None and self.client.connected:
            from cloud_sync.mqtt import health_topic

            self.client.publish_json(health_topic(self.thing), health)
            self.shadow.report()
        return health

    def run(self, max_seconds: float | None = None) -> None:
        started = time.monotonic()
        next_health = 0.0
        log.info("anc-cloud-sync running for thing %s, sink %s", self.thing, self.cfg["sink"])
        try:
            while not self.stop:
                if self.forwarder is not None:
                    moved = self.forwarder.step(0.01)
                else:
                    self.client.poll(0.01)
                    moved = self.kinesis.step()
                now = time.monotonic()
                if now >= next_health:
                    self.write_health()
                    next_health = now + self.cfg["health_interval_s"]
                if max_seconds is not None and now - started > max_seconds:
                    break
                if not moved and self.spool.stats()["backlog_total"] == 0:
                    time.sleep(0.05)  # idle: nothing queued; the runtime appends in batches
        finally:
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
            print(json.dumps(report, indent=2, sort_keys=True))
        elif args.command == "provision":
            from cloud_sync.provisioning import ProvisioningSettings, provision

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
            print(f"provisioned thing {result.thing_name}; certificate in {result.cert_file}; "
                  f"config {cfg['_source']} updated (restart anc-cloud-sync run to use the new identity)")
    except UserError as exc:
        print(f"anc-cloud-sync: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
