"""User mistakes through both command lines, as a user types them: one line on stderr naming
the file or key, exit status 2, no traceback, nothing half-written. And output piped into a
reader that stops early (`... | head -1`) ends quietly."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import yaml

from simulator.scenes import generate_scene

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "NUMBA_CACHE_DIR": os.environ.get("NUMBA_CACHE_DIR", str(ROOT / ".cache" / "numba"))}
IS_ROOT = os.geteuid() == 0


def command(program, *args):
    module = {"anc-device": "device.cli", "anc-cloud-sync": "cloud_sync.agent"}[program]
    return [sys.executable, "-m", module, *map(str, args)]


def run(program, *args):
    return subprocess.run(command(program, *args), capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=600)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Everything the rows refer to, made once."""
    base = tmp_path_factory.mktemp("bad_input")
    scene = base / "hum.wav"
    soundfile.write(str(scene), generate_scene("engine_hum", 1.0, 16000, seed=3), 16000)
    (base / "empty.wav").write_bytes(b"")
    (base / "notes.txt").write_text("not audio\n")
    (base / "bad_plant.yaml").write_text("name: x\nsample_rate: [48000\nlatency_samples: 72\n")
    (base / "bad_config.yaml").write_text("audio:\n  block_size: 32\n   sample_rate: 48000\n")
    (base / "unknown_key.yaml").write_text("audio:\n  blok_size: 32\n")
    (base / "no_model.yaml").write_text(f"classifier:\n  model: {base / 'missing.onnx'}\n")
    hum = generate_scene("engine_hum", 1.0, 16000, seed=3)
    soundfile.write(str(base / "stereo.wav"), np.stack([hum, 0.5 * hum], axis=1), 16000)
    soundfile.write(str(base / "three.wav"), np.stack([hum, hum, hum], axis=1), 16000)
    (base / "ears_collide.yaml").write_text(
        "audio:\n  ears:\n    - {name: left, reference_channel: 0, error_channel: 1, speaker_channel: 0}\n"
        "    - {name: right, reference_channel: 1, error_channel: 3, speaker_channel: 1}\n")
    read_only = base / "read_only"
    read_only.mkdir()
    read_only.chmod(0o555)
    return base


def _unwritable(base: Path) -> Path:
    # root ignores directory modes; /sys refuses new files to everyone
    return Path("/sys/anc-test") if IS_ROOT else base / "read_only" / "sub"


# (program, argv with {base} and {unwritable}, what the one line must name, paths that must not exist afterwards)
ANC_DEVICE_ROWS = [
    ("--simulate {base}/missing.wav", "missing.wav: scene file not found", []),
    ("--simulate {base}/notes.txt", "notes.txt: not a readable audio file", []),
    ("--simulate {base}/empty.wav", "empty.wav: file is empty", []),
    ("--simulate {base}", "is a directory, not an audio file", []),
    ("--simulate {base}/hum.wav --plant spaceship", "spaceship: plant not found", []),
    ("--simulate {base}/hum.wav --plant {base}/bad_plant.yaml", "bad_plant.yaml: invalid plant YAML at line 3, column",
     []),
    ("--simulate {base}/hum.wav --config {base}/missing.yaml", "missing.yaml: config file not found", []),
    ("--simulate {base}/hum.wav --config {base}/ears_collide.yaml",
     "audio.ears[1].reference_channel: channel 1 is also left.error_channel", []),
    ("--simulate {base}/stereo.wav --plant headphone --out {base}/out_stereo",
     "stereo.wav: 2 channels, but plant headphone has one ear", ["{base}/out_stereo"]),
    ("--simulate {base}/three.wav --plant headphone-stereo --out {base}/out_three",
     "three.wav: 3 channels for plant headphone-stereo with 2 ears (left, right)", ["{base}/out_three"]),
    ("--simulate {base}/hum.wav --config {base}/bad_config.yaml", "bad_config.yaml: invalid YAML at line 3", []),
    ("--simulate {base}/hum.wav --config {base}/unknown_key.yaml", "blok_size", []),
    ("--simulate {base}/hum.wav --out {base}/hum.wav", "--out must be a directory", []),
    ("--simulate {base}/hum.wav --out {unwritable}", "cannot create the output directory", ["{unwritable}"]),
    ("--simulate {base}/hum.wav --config {base}/no_model.yaml --out {base}/out_no_model",
     "classifier.model: ", ["{base}/out_no_model"]),
    ("scene white {unwritable}/x.wav", "x.wav", ["{unwritable}/x.wav"]),
    ("scene white {base}", "is a directory; name the file to write", []),
    ("scene white {base}/x.txt", "x.txt: unknown audio file type .txt", ["{base}/x.txt"]),
    ("scene white {base}/noext", "noext: unknown audio file type (no extension)", ["{base}/noext"]),
    ("scene white {base}/missing_dir/x.wav", "does not exist", []),
    ("scene white {base}/x.wav --seconds 0", "--seconds: 0.0 is out of range", ["{base}/x.wav"]),
    ("scene jackhammer {base}/x.wav", "invalid choice: 'jackhammer'", ["{base}/x.wav"]),
    ("run --duration -1", "--duration: expected a positive number", []),
    ("classify {base}/missing.wav", "missing.wav", []),
    ("classify {base}/notes.txt", "notes.txt", []),
]


def _expand(text, base):
    return text.format(base=base, unwritable=_unwritable(base))


@pytest.mark.parametrize("argv, message, absent", ANC_DEVICE_ROWS, ids=[row[0].split(" {")[0] + ": " + row[1][:40]
                                                                      for row in ANC_DEVICE_ROWS])
def test_anc_device_user_mistake_is_one_line_and_exit_2(files, argv, message, absent):
    before = sorted(p.name for p in files.iterdir())
    result = run("anc-device", *_expand(argv, files).split())
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and message in lines[0], result.stderr
    for path in absent:
        assert not Path(_expand(path, files)).exists(), path
    # no temporary or partial file left in the directory the command was pointed at
    assert sorted(p.name for p in files.iterdir()) == before


# -- anc-cloud-sync ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    from tests.cloud.broker import Pki

    base = tmp_path_factory.mktemp("cloud_bad_input")
    pki = Pki(base / "pki")
    cert, key = pki.issue("thing-1")
    other_cert, _ = pki.issue("thing-2")
    garbage = base / "garbage.pem.crt"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")

    def config(name, **mqtt):
        cfg = yaml.safe_load((ROOT / "config" / "cloud_sync.yaml").read_text())
        runtime = base / "runtime.yaml"  # the agent reads the spool and state directory from the runtime's file
        runtime.write_text(yaml.safe_dump({"runtime": {"state_dir": str(base / "state")},
                                           "spool": {"path": str(base / "spool.sqlite")}}))
        cfg.update(thing_name="thing-1", runtime_config=str(runtime), status_file=str(base / "state" / "status.json"))
        cfg["mqtt"].update(endpoint="127.0.0.1", port=1, ca_file=str(pki.ca_file), cert_file=str(cert),
                           key_file=str(key))
        cfg["mqtt"].update(mqtt)
        cfg["jobs"]["models_dir"] = str(base / "models")
        path = base / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    return {
        "missing_ca": config("missing_ca", ca_file=str(base / "no_ca.pem")),
        "missing_cert": config("missing_cert", cert_file=str(base / "no_cert.pem")),
        "garbage_cert": config("garbage_cert", cert_file=str(garbage)),
        "mismatch": config("mismatch", cert_file=str(other_cert)),
        "good": config("good"),
    }


CLOUD_ROWS = [
    pytest.param("missing_ca", "no_ca.pem", id="missing_ca"),
    pytest.param("missing_cert", "no_cert.pem", id="missing_cert"),
    pytest.param("garbage_cert", "garbage.pem.crt", id="garbage_cert"),
    pytest.param("mismatch", "key", id="cert_key_mismatch"),
]


@pytest.mark.parametrize("name, message", CLOUD_ROWS)
def test_cloud_sync_bad_credentials_are_one_line_and_exit_2(cloud, name, message):
    result = run("anc-cloud-sync", "--config", cloud[name], "run", "--seconds", "0")
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if "anc-cloud-sync" in line or "error" in line.lower()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and message in lines[0], result.stderr


# -- pipes closed early ----------------------------------------------------------------------------

def _closed_early(argv):
    """Run with stdout a pipe whose reader has already gone (what `| head -1` leaves behind
    once head has its line)."""
    reader, writer = os.pipe()
    os.close(reader)
    try:
        result = subprocess.run(argv, stdout=writer, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=ENV, timeout=600)
    finally:
        os.close(writer)
    return result


def test_simulate_into_a_closed_pipe_ends_quietly(files):
    result = _closed_early(command("anc-device", "--simulate", files / "hum.wav"))
    assert result.stderr == "" and result.returncode in (0, 141), result.stderr


def test_classify_into_a_closed_pipe_ends_quietly(files):
    result = _closed_early(command("anc-device", "classify", files / "hum.wav"))
    assert result.stderr == "" and result.returncode in (0, 141), result.stderr


def test_cloud_sync_status_into_a_closed_pipe_ends_quietly(cloud):
    result = _closed_early(command("anc-cloud-sync", "--config", cloud["good"], "status"))
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr
    assert result.returncode in (0, 141), result.stderr


def test_piped_into_head_prints_the_first_line_only():
    result = subprocess.run(f"{sys.executable} -m device.cli --help | head -1", shell=True, capture_output=True,
                            text=True, cwd=ROOT, env=ENV, timeout=120)
    assert result.stdout.startswith("usage: anc-device") and result.stderr == ""
