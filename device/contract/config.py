"""Configuration: load YAML, merge it over the defaults, validate every key.

`config/default.yaml` holds every key with its unit; a user file (``--config FILE``) only
needs the keys it changes. Validation is strict: an unknown key, a wrong type, a value out
of range or a missing file raises `ConfigError` with one line naming the file, the key and
the value, so the command line can print it and exit 2.

The schema lives here, in code; the test suite checks that `default.yaml` and the schema
describe the same keys.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from device.contract.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# Relative paths in the defaults are resolved against CONFIG_DIR, which sits beside the
# `models` package both in the source tree and in an installed wheel.
CONFIG_DIR = PROJECT_ROOT / "config"


def default_file(name: str) -> Path:
    """A defaults file: config/NAME in the source tree, else the copy a wheel ships in
    the package `device.defaults` (built from config/)."""
    in_tree = CONFIG_DIR / name
    return in_tree if in_tree.exists() else Path(__file__).resolve().parents[1] / "defaults" / name


DEFAULT_CONFIG = default_file("default.yaml")

NOISE_CLASSES = ("white", "pink", "traffic", "office", "construction", "cafe")
# What the speaker plays: nothing, anti-noise, or the room (the outer mic, equalized).
ANC_MODES = ("off", "anc", "hear-through")
CONTROLLER_ALGORITHMS = ("partitioned", "time")


@dataclass(frozen=True)
class Key:
    """One configuration value: its type, unit and allowed range."""

    kind: str  # "int", "float", "bool", "str", "path", "device", "ears"
    unit: str = ""
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    choices: tuple[str, ...] | None = None
    nullable: bool = False


def _preset_section() -> dict[str, Key]:
    return {
        "step_size": Key("float", "normalized step (mu)", 0.0, 2.0, exclusive_minimum=True),
        "leakage": Key("float", "per sample", 0.0, 0.1),
        "intensity": Key("float", "0..1 of full anti-noise", 0.0, 1.0),
    }


SCHEMA: dict[str, Any] = {
    "audio": {
        "sample_rate": Key("int", "Hz", 8000, 192000),
        "block_size": Key("int", "samples", 1, 4096),
        "device": Key("device", "PortAudio device name or index", nullable=True),
        "input_device": Key("device", "PortAudio device name or index", nullable=True),
        "output_device": Key("device", "PortAudio device name or index", nullable=True),
        "reference_channel": Key("int", "input channel index", 0, 63),
        "error_channel": Key("int", "input channel index", 0, 63),
        "speaker_channel": Key("int", "output channel index", 0, 63),
        "ears": Key("ears", "list of {name, reference_channel, error_channel, speaker_channel}", nullable=True),
    },
    "controller": {
        "taps": Key("int", "samples, or auto: the length identification recommends for the rig", 1, 4096,
                    choices=("auto",)),
        "max_taps": Key("int", "samples", 64, 4096),
        "step_size": Key("float", "normalized step (mu)", 0.0, 2.0, exclusive_minimum=True),
        "leakage": Key("float", "per sample", 0.0, 0.1),
        "regularization": Key("float", "power (full scale = 1)", 0.0, 1.0, exclusive_minimum=True),
        "highpass_hz": Key("float", "Hz", 1.0, 1000.0),
        "secondary_path_taps": Key("int", "samples", 2, 4096),
        "feedback_neutralization": Key("bool"),
        "feedback_path_taps": Key("int", "samples", 2, 4096),
        "algorithm": Key("str", choices=CONTROLLER_ALGORITHMS),
        "update_block": Key("int", "samples, a power of two", 8, 1024),
        "bin_floor_db": Key("float", "dB under the mean bin power", -120.0, 0.0),
        "delay_tolerance_samples": Key("float", "samples", 0.0, 64.0),
        "variable_step": Key("bool"),
        "reidentify": Key("bool"),
        "reidentify_min_interval_s": Key("float", "s", 1.0, 86400.0),
        "reidentify_probe_s": Key("float", "s", 0.1, 10.0),
        "reidentify_probe_level_dbfs": Key("float", "dBFS", -80.0, -6.0),
        "reidentify_change_db": Key("float", "dB", -40.0, 10.0),
        "reidentify_mismatch_db": Key("float", "dB, 0 = off", 0.0, 40.0),
    },
    "safety": {
        "output_ceiling_dbfs": Key("float", "dBFS", -60.0, 0.0),
        "limiter_release_ms": Key("float", "ms", 0.0, 10000.0, exclusive_minimum=True),
        "fade_ms": Key("float", "ms", 0.0, 10000.0, exclusive_minimum=True),
        "baseline_ms": Key("float", "ms", 0.0, 10000.0, exclusive_minimum=True),
        "watchdog_rise_db": Key("float", "dB", 0.0, 60.0, exclusive_minimum=True),
        "watchdog_hold_ms": Key("float", "ms", 0.0, 10000.0, exclusive_minimum=True),
        "sustained_rise_db": Key("float", "dB", 0.0, 20.0, exclusive_minimum=True),
        "sustained_hold_ms": Key("float", "ms", 0.0, 60000.0, exclusive_minimum=True),
        "max_weight_norm": Key("float", "L2 norm", 0.0, 1e6, exclusive_minimum=True),
        "step_backoff": Key("float", "factor", 0.0, 1.0, exclusive_minimum=True),
        "min_step_size": Key("float", "normalized step (mu)", 0.0, 2.0, exclusive_minimum=True),
    },
    "anc": {
        "enabled": Key("bool"),
        "intensity": Key("float", "0..1 of full anti-noise", 0.0, 1.0),
        "ramp_ms": Key("float", "ms", 0.0, 10000.0, exclusive_minimum=True),
        "mode": Key("str", choices=ANC_MODES),
        "hear_through_taps": Key("int", "samples", 1, 1024),
        "hear_through_gain_db": Key("float", "dB", -40.0, 12.0),
    },
    "alarms": {
        "enabled": Key("bool"),
        "hold_s": Key("float", "s", 0.0, 60.0),
        "prominence_db": Key("float", "dB", 3.0, 40.0),
        "min_level_dbfs": Key("float", "dBFS", -120.0, 0.0),
        "min_duration_ms": Key("float", "ms", 32.0, 1000.0),
        "release_ms": Key("float", "ms", 50.0, 10000.0),
        "onset_rise_db": Key("float", "dB", 0.0, 60.0),
        "steady_siren_rise_db": Key("float", "dB", 0.0, 60.0),
        "swept_siren_rise_db": Key("float", "dB", 0.0, 60.0),
        "sustained_ms": Key("float", "ms", 32.0, 1000.0),
        "sustained_prominence_db": Key("float", "dB", 3.0, 40.0),
        "sustained_rise_db": Key("float", "dB", 0.0, 60.0),
        "sustained_before_db": Key("float", "dB", 0.0, 40.0),
        "sustained_horn_prominence_db": Key("float", "dB", 3.0, 40.0),
        "comb_db": Key("float", "dB", 3.0, 30.0),
        "comb_rise_db": Key("float", "dB", 0.0, 60.0),
        "comb_before_db": Key("float", "dB", 0.0, 30.0),
        "level_wobble_db": Key("float", "dB", 0.0, 20.0),
    },
    "identification": {
        "probe_level_dbfs": Key("float", "dBFS", -80.0, -6.0),
        "duration_s": Key("float", "s", 0.1, 60.0),
        "fade_ms": Key("float", "ms", 0.0, 1000.0),
        "seed": Key("int", "", 0, 2**32 - 1),
        "max_left_out_db": Key("float", "dB", -80.0, -10.0),
        "feedback_threshold_db": Key("float", "dB", -80.0, 20.0),
        "ambient_s": Key("float", "s", 0.0, 60.0),
    },
    "classifier": {
        "enabled": Key("bool"),
        "model": Key("path", "ONNX file, relative to this config file"),
        "window_s": Key("float", "s", 0.1, 10.0),
        "hop_s": Key("float", "s", 0.05, 10.0),
        "confidence_threshold": Key("float", "probability", 0.0, 1.0),
        "hysteresis_windows": Key("int", "windows", 1, 100),
        "unknown_distance": Key("float", "RMS z-score", 0.0, 1000.0, exclusive_minimum=True),
        "unknown_min_probability": Key("float", "probability", 0.0, 1.0),
        "unknown_level_margin_db": Key("float", "dB", 0.0, 200.0),
    },
    "presets": {name: _preset_section() for name in NOISE_CLASSES},
    "runtime": {
        "state_dir": Key("path", "directory, relative to this config file"),
        "metrics_interval_s": Key("float", "s", 0.1, 3600.0),
        "device_id": Key("str", "thing name", nullable=True),
    },
    "spool": {
        "path": Key("path", "SQLite file, relative to this config file"),
        "budget_mb": Key("float", "MiB", 0.1, 100000.0),
    },
    "simulator": {
        "plant": Key("str", "preset name or YAML file"),
        "seed": Key("int", "", 0, 2**32 - 1),
    },
}


class Section(Mapping[str, Any]):
    """Read-only view of one config section with attribute access (`cfg.controller.taps`)."""

    def __init__(self, values: dict[str, Any]):
        self._values = {k: Section(v) if isinstance(v, dict) else v for k, v in values.items()}

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def as_dict(self) -> dict[str, Any]:
        return {k: v.as_dict() if isinstance(v, Section) else v for k, v in self._values.items()}

    def __repr__(self) -> str:
        return f"Section({self.as_dict()!r})"


class Config(Section):
    """The validated configuration, plus where it came from."""

    def __init__(self, values: dict[str, Any], source: Path):
        super().__init__(values)
        self._source = source

    @property
    def source(self) -> Path:
        return self._source

    def replace(self, section: str, **changes: Any) -> "Config":
        """A copy with some keys of one section changed, validated like a file."""
        values = self.as_dict()
        values[section] = {**values[section], **changes}
        checked = validate(values, SCHEMA, str(self._source), "", resolve_from=None)
        return Config(checked, self._source)


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError(f"{path}: config file not found")
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, not a config file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.__class__.__name__})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(data).__name__}")
    return data


def merge_over(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_over(merged[key], value)
        else:
            merged[key] = value
    return merged


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_value(key: Key, value: Any, where: str, resolve_from: Path | None) -> Any:
    if value is None:
        if key.nullable:
            return None
        raise ConfigError(f"{where}: a value is required, got null")
    if key.kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {_describe(value)}")
        return value
    if key.kind in ("int", "float"):
        if key.choices and isinstance(value, str) and value in key.choices:
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            expected = "an integer" if key.kind == "int" else "a number"
            raise ConfigError(f"{where}: expected {expected}, got {_describe(value)}")
        if key.kind == "int" and not (isinstance(value, int) or float(value).is_integer()):
            raise ConfigError(f"{where}: expected an integer, got {_describe(value)}")
        number = int(value) if key.kind == "int" else float(value)
        if isinstance(number, float) and not math.isfinite(number):
            raise ConfigError(f"{where}: expected a finite number, got {_describe(value)}")
        low, high = key.minimum, key.maximum
        too_low = low is not None and (number <= low if key.exclusive_minimum else number < low)
        too_high = high is not None and number > high
        if too_low or too_high:
            left = "(" if key.exclusive_minimum else "["
            unit = f" {key.unit}" if key.unit and not key.unit.startswith(("0..", "per")) else ""
            raise ConfigError(f"{where}: {number} is out of range {left}{low:g}, {high:g}]{unit}")
        return number
    if key.kind == "device":
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"{where}: expected a device name or index, got {_describe(value)}")
        return value
    if key.kind == "ears":
        return _check_ears(value, where)
    if key.kind in ("str", "path"):
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}: expected a non-empty string, got {_describe(value)}")
        if key.choices and value not in key.choices:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(key.choices)}")
        if key.kind == "path" and resolve_from is not None:
            path = Path(value).expanduser()
            return str(path if path.is_absolute() else (resolve_from / path).resolve())
        return value
    raise AssertionError(f"unknown kind {key.kind}")


EAR_KEYS = ("name", "reference_channel", "error_channel", "speaker_channel")
MAX_EARS = 8


@dataclass(frozen=True)
class EarChannels:
    """One ear of the duplex stream: its outer (reference) and inner (error) microphones'
    input channels and its speaker's output channel."""

    name: str
    reference_channel: int
    error_channel: int
    speaker_channel: int


def _check_ears(value: Any, where: str) -> list[dict[str, Any]]:
    """`audio.ears`: a list of ears, each with a name and its own three channels. No input
    channel may serve two microphones and no output channel two speakers, in one ear or across ears."""
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: expected a non-empty list of {{{', '.join(EAR_KEYS)}}}, got {_describe(value)}")
    if len(value) > MAX_EARS:
        raise ConfigError(f"{where}: {len(value)} ears, at most {MAX_EARS}")
    checked: list[dict[str, Any]] = []
    inputs: dict[int, str] = {}
    outputs: dict[int, str] = {}
    channel_key = Key("int", "channel index", 0, 63)
    for index, ear in enumerate(value):
        at = f"{where}[{index}]"
        if not isinstance(ear, dict):
            raise ConfigError(f"{at}: expected a mapping with {', '.join(EAR_KEYS)}, got {_describe(ear)}")
        for name in ear:
            if name not in EAR_KEYS:
                raise ConfigError(f"{at}.{name}: unknown key (allowed: {', '.join(EAR_KEYS)})")
        for name in EAR_KEYS:
            if name not in ear:
                raise ConfigError(f"{at}.{name}: missing key")
        ear_name = ear["name"]
        if not isinstance(ear_name, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", ear_name):
            raise ConfigError(f"{at}.name: expected a name of 1-32 letters, digits, _ or -, got {_describe(ear_name)}")
        if any(other["name"] == ear_name for other in checked):
            raise ConfigError(f"{at}.name: {ear_name!r} names two ears")
        entry: dict[str, Any] = {"name": ear_name}
        for name in EAR_KEYS[1:]:
            channel = _check_value(channel_key, ear[name], f"{at}.{name}", None)
            used = outputs if name == "speaker_channel" else inputs
            role = f"{ear_name}.{name}"
            if channel in used:
                raise ConfigError(f"{at}.{name}: channel {channel} is also {used[channel]}; "
                                  "every microphone and speaker needs its own channel")
            used[channel] = role
            entry[name] = channel
        checked.append(entry)
    return checked


def ear_channels(audio: Mapping[str, Any]) -> tuple[EarChannels, ...]:
    """The ears of the `audio` section: `audio.ears`, or, when it is null, one ear named
    `ear` from the single `reference_channel`, `error_channel` and `speaker_channel`."""
    ears = audio.get("ears")
    if not ears:
        return (EarChannels("ear", int(audio["reference_channel"]), int(audio["error_channel"]),
                            int(audio["speaker_channel"])),)
    return tuple(EarChannels(ear["name"], ear["reference_channel"], ear["error_channel"], ear["speaker_channel"])
                 for ear in ears)


def validate(data: Any, schema: dict[str, Any], source: str, prefix: str, resolve_from: Path | None,
              complete: bool = True) -> dict[str, Any]:
    """Check `data` against `schema`; with `complete`, every schema key must be present."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'top level'}: expected a mapping, got {_describe(data)}")
    checked: dict[str, Any] = {}
    for name, value in data.items():
        where = f"{source}: {prefix}{name}"
        if name not in schema:
            close = difflib.get_close_matches(str(name), list(schema), n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise ConfigError(f"{where}: unknown key{hint}")
        spec = schema[name]
        if isinstance(spec, dict):
            checked[name] = validate(value, spec, source, f"{prefix}{name}.", resolve_from, complete)
        else:
            checked[name] = _check_value(spec, value, where, resolve_from)
    if complete:
        for name in schema:
            if name not in checked:
                raise ConfigError(f"{source}: {prefix}{name}: missing key")
    return checked


def _cross_checks(values: dict[str, Any], source: str) -> None:
    controller = values["controller"]
    classifier = values["classifier"]
    if classifier["hop_s"] > classifier["window_s"]:
        raise ConfigError(
            f"{source}: classifier.hop_s: {classifier['hop_s']} is longer than classifier.window_s ({classifier['window_s']})"
        )
    block = controller["update_block"]
    if block & (block - 1):
        raise ConfigError(f"{source}: controller.update_block: {block} is not a power of two (try {1 << (block.bit_length() - 1)})")
    safety = values["safety"]
    if safety["min_step_size"] > controller["step_size"]:
        raise ConfigError(
            f"{source}: safety.min_step_size: {safety['min_step_size']} is above controller.step_size ({controller['step_size']})"
        )


def load_layered(path: str | Path | None, schema: dict[str, Any], defaults_path: Path,
                 cross_checks=None) -> tuple[dict[str, Any], Path]:
    """The shipped defaults, with the keys of `path` (a partial file) merged over them, validated
    against `schema`. Errors name the file that holds the bad key. Relative paths are resolved
    against the directory of the file that sets them."""
    defaults = validate(read_yaml(defaults_path), schema, str(defaults_path), "", defaults_path.resolve().parent)
    if path is None:
        if cross_checks is not None:
            cross_checks(defaults, str(defaults_path))
        return defaults, defaults_path
    user_path = Path(path)
    user = read_yaml(user_path)
    # Validate the user's keys against the schema first, so errors name the user's file.
    partial = validate(user, schema, str(user_path), "", user_path.resolve().parent, complete=False)
    merged = merge_over(defaults, partial)
    if cross_checks is not None:
        cross_checks(merged, str(user_path))
    return merged, user_path


def load_config(path: str | Path | None = None) -> Config:
    """The runtime's configuration: the defaults with `path` merged over them, validated."""
    values, source = load_layered(path, SCHEMA, DEFAULT_CONFIG, _cross_checks)
    return Config(values, source)


# -- the cloud agent's configuration ------------------------------------------------------------
# The agent reads the spool, the state directory and the spool's budget from the runtime's own
# configuration (`runtime_config`), so the two processes can never disagree on them.

DEFAULT_AGENT_CONFIG = default_file("cloud_sync.yaml")

AGENT_SCHEMA: dict[str, Any] = {
    "thing_name": Key("str", "AWS IoT thing name", nullable=True),
    "sink": Key("str", choices=("mqtt", "kinesis")),
    "runtime_config": Key("path", "the runtime's config file; null = its shipped defaults", nullable=True),
    "status_file": Key("path"),
    "health_interval_s": Key("float", "s", 0.0, 86400.0, exclusive_minimum=True),
    "mqtt": {
        "endpoint": Key("str"),
        "port": Key("int", "TCP port", 1, 65535),
        "ca_file": Key("path"),
        "cert_file": Key("path"),
        "key_file": Key("path"),
        "keepalive_s": Key("int", "s", 5, 1200),
        "max_message_kb": Key("int", "KiB", 1, 128),
        "max_records": Key("int", "records", 1, 10000),
        "max_inflight": Key("int", "messages", 1, 1000),
        "publish_rate": Key("float", "messages/s", 0.0, 100.0, exclusive_minimum=True),
        "backoff_base_s": Key("float", "s", 0.0, 3600.0, exclusive_minimum=True),
        "backoff_cap_s": Key("float", "s", 0.0, 86400.0, exclusive_minimum=True),
    },
    "telemetry": {
        "enabled": Key("bool"),
    },
    "shadow": {
        "enabled": Key("bool"),
    },
    "kinesis": {
        "stream_name": Key("str"),
        "region": Key("str"),
    },
    "provisioning": {
        "enabled": Key("bool"),
        "claim_cert_file": Key("path"),
        "claim_key_file": Key("path"),
        "template_name": Key("str"),
        "credentials_dir": Key("path"),
        "use_csr": Key("bool"),
        "timeout_s": Key("float", "s", 0.0, 600.0, exclusive_minimum=True),
    },
    "recordings": {
        "enabled": Key("bool"),
        "record_on_start_s": Key("float", "s", 0.0, 60.0),
        "mics": Key("str", "which microphones", choices=("both", "reference", "error")),
        "budget_mb": Key("float", "MiB", 0.0, 256.0, exclusive_minimum=True),
        "credentials_endpoint": Key("str"),
        "role_alias": Key("str"),
        "bucket": Key("str"),
        "prefix": Key("str"),
        "region": Key("str"),
        "scan_interval_s": Key("float", "s", 0.0, 3600.0, exclusive_minimum=True),
    },
    "jobs": {
        "enabled": Key("bool"),
        "download_timeout_s": Key("float", "s", 0.0, 86400.0, exclusive_minimum=True),
        "models_dir": Key("path"),
        "public_key_file": Key("path", nullable=True),
    },
}


def _agent_cross_checks(values: dict[str, Any], source: str) -> None:
    mqtt = values["mqtt"]
    if mqtt["backoff_base_s"] > mqtt["backoff_cap_s"]:
        raise ConfigError(f"{source}: mqtt.backoff_base_s: {mqtt['backoff_base_s']} is above "
                          f"mqtt.backoff_cap_s ({mqtt['backoff_cap_s']})")


def load_agent_config(path: str | Path | None = None) -> dict[str, Any]:
    """The agent's configuration (defaults with `path` merged over them), plus the keys it
    shares with the runtime, taken from the runtime's configuration: ``spool_path``,
    ``spool_budget_mb`` and ``state_dir``. ``_source`` names the agent's file."""
    values, source = load_layered(path, AGENT_SCHEMA, DEFAULT_AGENT_CONFIG, _agent_cross_checks)
    runtime = load_config(values["runtime_config"])
    values["spool_path"] = runtime.spool.path
    values["spool_budget_mb"] = runtime.spool.budget_mb
    values["state_dir"] = runtime.runtime.state_dir
    values["_source"] = str(source)
    return values
