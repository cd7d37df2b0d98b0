import re
import subprocess
import sys

import pytest

from device.contract.config import DEFAULT_CONFIG, SCHEMA, Key, load_config
from device.contract.errors import ConfigError


def _leaf_keys(schema, prefix=""):
    for name, spec in schema.items():
        if isinstance(spec, Key):
            yield prefix + name
        else:
            yield from _leaf_keys(spec, f"{prefix}{name}.")


def test_defaults_load_and_cover_the_schema(cfg):
    values = cfg.as_dict()
    for dotted in _leaf_keys(SCHEMA):
        section = values
        for part in dotted.split("."):
            assert part in section, f"default.yaml lacks {dotted}"
            section = section[part]


def test_every_default_key_is_documented_with_a_comment():
    lines = DEFAULT_CONFIG.read_text().splitlines()
    undocumented = [line for line in lines if re.match(r"^\s+\w+:\s*\S", line) and "#" not in line]
    # Preset rows share the comment of the first row of the block.
    undocumented = [line for line in undocumented if not re.match(r"^\s+(pink|traffic|office|construction|cafe):\s*\{", line)]
    assert undocumented == []


def write(tmp_path, text, name="user.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_user_file_overrides_only_its_keys(tmp_path):
    cfg = load_config(write(tmp_path, "controller:\n  taps: 128\n"))
    assert cfg.controller.taps == 128
    assert cfg.controller.step_size == load_config().controller.step_size


def test_relative_paths_resolve_against_the_file(tmp_path):
    cfg = load_config(write(tmp_path, "spool:\n  path: data/spool.sqlite\n"))
    assert cfg.spool.path == str(tmp_path / "data" / "spool.sqlite")


@pytest.mark.parametrize("text, message", [
    ("controller:\n  tap: 128\n", r"controller\.tap: unknown key \(did you mean 'controller\.taps'\?\)"),
    ("controler:\n  taps: 128\n", r"controler: unknown key \(did you mean 'controller'\?\)"),
    ("controller:\n  taps: many\n", r"controller\.taps: expected an integer, got 'many'"),
    ("controller:\n  taps: 12.5\n", r"controller\.taps: expected an integer, got 12\.5"),
    ("controller:\n  step_size: 0\n", r"controller\.step_size: 0\.0 is out of range \(0, 2\]"),
    ("anc:\n  intensity: 1.5\n", r"anc\.intensity: 1\.5 is out of range \[0, 1\]"),
    ("anc:\n  enabled: 'yes'\n", r"anc\.enabled: expected true or false, got 'yes'"),
    ("audio:\n  sample_rate: .nan\n", r"audio\.sample_rate: expected"),
    ("controller: 5\n", r"controller: expected a mapping, got 5"),
    ("- a\n- b\n", r"expected a mapping of sections at the top level"),
    ("controller:\n  taps: [1\n", r"invalid YAML at line \d+, column \d+"),
    ("classifier:\n  window_s: 1.0\n  hop_s: 2.0\n", r"classifier\.hop_s: 2\.0 is longer than classifier\.window_s"),
    ("controller:\n  update_block: 48\n", r"controller\.update_block: 48 is not a power of two \(try 32\)"),
    ("controller:\n  algorithm: fast\n", r"controller\.algorithm: 'fast' is not one of partitioned, time"),
])
def test_bad_values_name_the_file_key_and_value(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    text = str(error.value)
    assert str(path) in text
    assert "\n" not in text
    assert re.search(message, text), text


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)


def test_cli_reports_config_errors_in_one_line_with_exit_2(tmp_path):
    path = write(tmp_path, "controller:\n  taps: -3\n")
    run = subprocess.run([sys.executable, "-m", "device.cli", "--simulate", "whatever.wav", "--config", str(path)],
                         capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stdout == ""
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in run.stderr
    assert "controller.taps: -3 is out of range" in lines[0]
