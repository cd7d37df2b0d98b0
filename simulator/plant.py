"""The acoustic plant: its paths and latency, read from a preset or a plant YAML.

    ref = reference_path * s + feedback_path * y_out + noise
    err = primary_path   * s + secondary_path * y_out + noise

where s is the noise scene and y_out the controller's output delayed by `latency_samples`
(the digital I/O delay: at least one block, two on a duplex callback, plus converters).
Running a controller against it is `simulator.closed_loop`'s; this module needs no numba, so
the JACK plant emulator, which only reads a plant, does not map numba's LLVM beside the
runtime it serves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from device.core.causality import Causality, onset
from device.core.dsp.lsfir import fft_convolve
from device.contract.errors import UserError

PRESET_DIR = Path(__file__).resolve().parent / "presets"
PRESETS = ("headphone", "duct", "headphone-stereo")
SPEED_OF_SOUND = 343.0


@dataclass
class Plant:
    name: str
    sample_rate: int
    latency_samples: int
    primary_path: np.ndarray
    secondary_path: np.ndarray
    reference_path: np.ndarray
    feedback_path: np.ndarray | None
    sensor_noise_dbfs: float | None
    source: str
    description: str = ""
    # The real plant changing mid-run (the controller is not told): from `at_sample` on, the
    # speaker reaches the error mic through `secondary_path` (and the reference mic through
    # `feedback_path`, when given).
    path_changes: list["PathChange"] = field(default_factory=list)

    # -- loading -------------------------------------------------------------------------
    @classmethod
    def load(cls, name_or_path: str | Path, sample_rate: int | None = None) -> "Plant":
        """A built-in preset by name, or a plant YAML file. `sample_rate`, when given, must match."""
        spec, path = read_plant_spec(name_or_path)
        if "ears" in spec:
            raise UserError(f"{path}: ears: a plant with {len(spec['ears'] or ())} ears, where one ear was expected")
        plant = cls._from_spec(spec, path)
        if sample_rate is not None and sample_rate != plant.sample_rate:
            raise UserError(f"{path}: sample_rate is {plant.sample_rate} Hz but {sample_rate} Hz was asked for")
        return plant

    @classmethod
    def _from_spec(cls, spec: dict, path: Path) -> "Plant":
        allowed = {"name", "description", "sample_rate", "latency_samples", "reference_path", "primary_path",
                   "secondary_path", "feedback_path", "sensor_noise_dbfs", "path_changes"}
        for key in spec:
            if key not in allowed:
                raise UserError(f"{path}: {key}: unknown plant key (allowed: {', '.join(sorted(allowed))})")
        for key in ("sample_rate", "latency_samples", "primary_path", "secondary_path"):
            if key not in spec:
                raise UserError(f"{path}: {key}: missing key")
        rate = spec["sample_rate"]
        if isinstance(rate, bool) or not isinstance(rate, int) or not 8000 <= rate <= 192000:
            raise UserError(f"{path}: sample_rate: expected an integer in [8000, 192000] Hz, got {rate!r}")
        latency = spec["latency_samples"]
        if isinstance(latency, bool) or not isinstance(latency, int) or latency < 1:
            raise UserError(f"{path}: latency_samples: expected a positive integer, got {latency!r}")
        noise = spec.get("sensor_noise_dbfs")
        if noise is not None and (isinstance(noise, bool) or not isinstance(noise, (int, float)) or not -200 <= noise <= 0):
            raise UserError(f"{path}: sensor_noise_dbfs: expected a number in [-200, 0] dBFS, got {noise!r}")

        def response(key: str, required: bool) -> np.ndarray | None:
            value = spec.get(key)
            if value is None:
                if required:
                    raise UserError(f"{path}: {key}: missing key")
                return None
            return _read_response(path, key, value, rate)

        reference = response("reference_path", False)
        feedback = response("feedback_path", False)
        changes = _read_path_changes(path, spec.get("path_changes"), rate, feedback is not None)
        return cls(
            name=str(spec.get("name", path.stem)),
            description=str(spec.get("description", "")),
            sample_rate=rate,
            latency_samples=latency,
            primary_path=response("primary_path", True),
            secondary_path=response("secondary_path", True),
            reference_path=np.array([1.0]) if reference is None else reference,
            feedback_path=feedback,
            sensor_noise_dbfs=None if noise is None else float(noise),
            source=str(path),
            path_changes=changes,
        )

    def check_block_size(self, block_size: int) -> None:
        if self.latency_samples < block_size:
            raise UserError(
                f"{self.source}: latency_samples: {self.latency_samples} is less than one block "
                f"({block_size} samples); a block-based controller cannot react faster than one block"
            )

    def with_secondary_path(self, secondary_path: np.ndarray) -> "Plant":
        copy = Plant(**{k: getattr(self, k) for k in self.__dataclass_fields__})
        copy.secondary_path = np.asarray(secondary_path, dtype=np.float64)
        return copy

    # -- causality -----------------------------------------------------------------------
    def causality(self) -> "Causality":
        """Compare when the noise reaches the error mic with when anti-noise can get there."""
        lead = onset(self.primary_path) - onset(self.reference_path)
        needed = self.latency_samples + onset(self.secondary_path)
        return Causality(
            acoustic_lead_samples=lead,
            control_delay_samples=needed,
            sample_rate=self.sample_rate,
        )

    def secondary_path_at(self, sample: int) -> np.ndarray:
        """The real secondary path in effect at `sample`, after the `path_changes` before it."""
        path = self.secondary_path
        for change in self.path_changes:
            if change.at_sample <= sample:
                path = change.secondary_path
        return path

    def full_secondary_path(self, at_sample: int = 0) -> np.ndarray:
        """The secondary path as the controller sees it (latency included), at `at_sample`."""
        return np.concatenate([np.zeros(self.latency_samples), self.secondary_path_at(at_sample)])

    def full_feedback_path(self) -> np.ndarray | None:
        if self.feedback_path is None:
            return None
        return np.concatenate([np.zeros(self.latency_samples), self.feedback_path])

    def sensor_noise(self, n: int, rng: np.random.Generator) -> np.ndarray:
        if self.sensor_noise_dbfs is None:
            return np.zeros(n)
        return rng.standard_normal(n) * 10.0 ** (self.sensor_noise_dbfs / 20.0)

    def open_loop(self, played: np.ndarray, seed: int, ambient: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Reference and error microphone signals when `played` (stream timeline) goes to the
        speaker with no controller: what a probe measurement records."""
        n = played.size
        rng = np.random.default_rng([seed, 1])
        delayed = np.concatenate([np.zeros(self.latency_samples), played])[:n]
        err = fft_convolve(delayed, self.secondary_path)[:n] + self.sensor_noise(n, rng)
        ref = self.sensor_noise(n, rng)
        if self.feedback_path is not None:
            ref = ref + fft_convolve(delayed, self.feedback_path)[:n]
        if ambient is not None:
            err = err + fft_convolve(ambient, self.primary_path)[:n]
            ref = ref + fft_convolve(ambient, self.reference_path)[:n]
        return ref, err


def read_plant_spec(name_or_path: str | Path) -> tuple[dict, Path]:
    """The mapping of a plant YAML file (a built-in preset by name, or a path) and its path."""
    text = str(name_or_path)
    path = PRESET_DIR / f"{text}.yaml" if text in PRESETS else Path(text)
    if not path.exists():
        raise UserError(f"{text}: plant not found (built-in presets: {', '.join(PRESETS)}, or a YAML file)")
    if path.is_dir():
        raise UserError(f"{path}: is a directory, not a plant YAML file")
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read plant YAML ({exc.__class__.__name__})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise UserError(f"{path}: invalid plant YAML{where}: {problem}") from None
    if not isinstance(spec, dict):
        raise UserError(f"{path}: expected a mapping of plant keys")
    return spec, path


@dataclass(frozen=True)
class PathChange:
    at_sample: int
    secondary_path: np.ndarray
    feedback_path: np.ndarray | None = None


def _read_path_changes(yaml_path: Path, value, rate: int, has_feedback: bool) -> list[PathChange]:
    """`path_changes: [{at_s: 8.0, secondary_path: FILE, feedback_path: FILE}]`, in time order."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise UserError(f"{yaml_path}: path_changes: expected a list of {{at_s, secondary_path}} entries, got {value!r}")
    changes = []
    for index, entry in enumerate(value):
        where = f"path_changes[{index}]"
        if not isinstance(entry, dict):
            raise UserError(f"{yaml_path}: {where}: expected a mapping with at_s and secondary_path, got {entry!r}")
        for key in entry:
            if key not in ("at_s", "secondary_path", "feedback_path"):
                raise UserError(f"{yaml_path}: {where}.{key}: unknown key (allowed: at_s, secondary_path, feedback_path)")
        at_s = entry.get("at_s")
        if isinstance(at_s, bool) or not isinstance(at_s, (int, float)) or not 0 <= at_s <= 86400 or at_s != at_s:
            raise UserError(f"{yaml_path}: {where}.at_s: expected a time in [0, 86400] s, got {at_s!r}")
        if "secondary_path" not in entry:
            raise UserError(f"{yaml_path}: {where}.secondary_path: missing key")
        secondary = _read_response(yaml_path, f"{where}.secondary_path", entry["secondary_path"], rate)
        feedback = None
        if entry.get("feedback_path") is not None:
            if not has_feedback:
                raise UserError(f"{yaml_path}: {where}.feedback_path: the plant has no feedback_path to change")
            feedback = _read_response(yaml_path, f"{where}.feedback_path", entry["feedback_path"], rate)
        changes.append(PathChange(int(round(float(at_s) * rate)), secondary, feedback))
    return sorted(changes, key=lambda change: change.at_sample)


def _read_response(yaml_path: Path, key: str, value, rate: int) -> np.ndarray:
    if not isinstance(value, str):
        raise UserError(f"{yaml_path}: {key}: expected a file name (.npy or .wav), got {value!r}")
    path = (yaml_path.parent / value).resolve()
    if not path.exists():
        raise UserError(f"{yaml_path}: {key}: file {value} not found")
    try:
        if path.suffix == ".npy":
            h = np.load(path, allow_pickle=False)
        else:
            import soundfile

            h, file_rate = soundfile.read(str(path), dtype="float64", always_2d=True)
            if file_rate != rate:
                raise UserError(f"{yaml_path}: {key}: {value} is at {file_rate} Hz, the plant at {rate} Hz")
            h = h[:, 0]
    except UserError:
        raise
    except Exception as exc:  # numpy and libsndfile raise many kinds for a bad file
        raise UserError(f"{yaml_path}: {key}: cannot read {value} ({exc.__class__.__name__})") from None
    h = np.asarray(h, dtype=np.float64)
    if h.ndim != 1 or h.size == 0:
        raise UserError(f"{yaml_path}: {key}: expected a mono impulse response, got shape {h.shape}")
    if not np.all(np.isfinite(h)) or not np.any(h):
        raise UserError(f"{yaml_path}: {key}: impulse response is all zeros or has NaN/Inf")
    return h
