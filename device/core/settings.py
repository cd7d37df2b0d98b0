"""The wearer's settings, in one place with one meaning.

``anc_enabled``, ``anc_intensity``, ``preset`` and ``anc_mode`` come from the configuration at start and from
the control channel (the device shadow) later. They are held here, by the worker, and reported
the same way everywhere: `reported.json`, the session record and the run summary all give the
user's intensity (0..1), never the product of it and a preset's. What the speaker gets is
derived from them (`speaker_gain`); the engine only ever receives that gain.
"""

from __future__ import annotations

from dataclasses import dataclass

AUTO = "auto"


@dataclass
class AncSettings:
    enabled: bool
    intensity: float  # the user's 0..1
    preset: str = AUTO  # "auto" (the classifier chooses) or a noise class forced by the user
    mode: str = "anc"  # off, anc or hear-through: what the wearer asked the speaker to play

    @property
    def preset_override(self) -> str | None:
        return None if self.preset == AUTO else self.preset

    def update(self, changes: dict) -> None:
        """Apply validated control-channel settings (`device.contract.control_channel`)."""
        if "anc_enabled" in changes:
            self.enabled = bool(changes["anc_enabled"])
        if "anc_intensity" in changes:
            self.intensity = float(changes["anc_intensity"])
        if "preset" in changes:
            self.preset = changes["preset"]
        if "anc_mode" in changes:
            self.mode = changes["anc_mode"]

    def reported(self) -> dict:
        return {"anc_enabled": self.enabled, "anc_intensity": round(self.intensity, 4), "preset": self.preset,
                "anc_mode": self.mode}

    @property
    def speaker_mode(self) -> str:
        """The wearer's mode as the speaker plays it: anc_enabled false means off."""
        return self.mode if self.enabled else "off"

    def speaker_gain(self, preset_intensity: float) -> float:
        """The anti-noise gain the engine applies: the user's intensity times the active preset's."""
        return self.intensity * preset_intensity
