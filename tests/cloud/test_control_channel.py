"""Local agent <-> runtime channel: validation, atomic files, cheap polling."""

import json

import pytest

from device.contract.control_channel import (DesiredWatcher, read_desired, read_reported, validate_settings,
                                    write_desired, write_reported)
from device.contract.errors import UserError


@pytest.mark.parametrize("bad", [
    {"anc_enabled": "yes"}, {"anc_intensity": 1.5}, {"anc_intensity": True}, {"anc_intensity": float("nan")},
    {"preset": "jazz"}, {"volume": 3}, ["anc_enabled"],
])
def test_invalid_settings_are_rejected_with_the_key(bad):
    with pytest.raises(UserError) as info:
        validate_settings(bad)
    assert "\n" not in str(info.value)
    if isinstance(bad, dict):
        assert next(iter(bad)) in str(info.value)


def test_desired_round_trip_merges_and_watcher_sees_each_change_once(tmp_path):
    watcher = DesiredWatcher(tmp_path)
    assert watcher.poll() is None and read_desired(tmp_path) is None
    write_desired(tmp_path, {"anc_enabled": False, "anc_intensity": 1})
    assert watcher.poll() == {"anc_enabled": False, "anc_intensity": 1.0}
    assert watcher.poll() is None
    document = write_desired(tmp_path, {"preset": "cafe"})
    assert document["version"] == 2
    assert watcher.poll() == {"anc_enabled": False, "anc_intensity": 1.0, "preset": "cafe"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_hand_edited_invalid_desired_file_is_refused(tmp_path):
    (tmp_path / "desired.json").write_text(json.dumps({"version": 1, "settings": {"anc_intensity": 7}}))
    with pytest.raises(UserError, match="anc_intensity"):
        DesiredWatcher(tmp_path).poll()
    (tmp_path / "desired.json").write_text("{broken")
    with pytest.raises(UserError, match="unreadable"):
        read_desired(tmp_path)


def test_reported_round_trip(tmp_path):
    assert read_reported(tmp_path) is None
    write_reported(tmp_path, {"anc_enabled": True, "preset": "auto", "model_version": "abc"})
    assert read_reported(tmp_path)["model_version"] == "abc"
