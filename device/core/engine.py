"""The ANC engine: owns the controller's state and runs one block per call.

Every backend (PortAudio, the JACK bench, the simulator) feeds `AncEngine.process` with
blocks of reference and error samples and gets the speaker block back; nothing here knows
where the samples come from. Settings change between blocks by writing into `params`;
the kernel ramps gains so no change clicks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from device.contract.config import ANC_MODES, Config
from device.core.dsp import layout as L
from device.core.dsp import tracking as T
from device.core.dsp.identification import controller_tap_budget, make_probe, recommended_controller_taps
from device.core.dsp.hear_through import design_equalizer
from device.core.dsp.partitioned import history_length, make_twiddles, state_size, trusted_bins
from device.contract.errors import UserError

EVENT_CAPACITY = 256
LONGEST_TAPS = 4096  # the longest controller.taps the configuration accepts
# Time constant of the band-limited update's leak outside its band (device.core.dsp.fxlms._band_leak):
# far slower than the update converges in its band, faster than what it adapts outside grows
# (with the estimate 2 samples off, 120 s on the duct stayed 10.1 dB or more under off; with no
# leak it was louder than off from 35 s). Shorter costs broadband content near the band's edge:
# duct / construction 21.1 dB at 8 s, 18.9 at 2 s, 22.0 with no leak.
BAND_LEAK_TIME_CONSTANT_MS = 8000.0


@dataclass(frozen=True)
class ControllerSettings:
    """Everything the kernel needs, in engine units (samples, linear gains)."""

    sample_rate: int
    block_size: int
    taps: int
    step_size: float
    leakage: float
    regularization: float
    output_ceiling: float
    limiter_release_ms: float
    fade_ms: float
    ramp_ms: float
    baseline_ms: float
    watchdog_rise_db: float
    watchdog_hold_ms: float
    max_weight_norm: float
    step_backoff: float
    min_step_size: float
    enabled: bool
    intensity: float
    trip_fade_ms: float = 5.0
    power_time_constant_ms: float = 20.0
    watchdog_floor_dbfs: float = -90.0
    highpass_hz: float = 5.0
    sustained_rise_db: float = 1.0
    sustained_hold_ms: float = 400.0
    mode: str = "anc"
    hear_through_taps: int = 64
    hear_through_gain_db: float = 0.0
    update_block: int = 0             # samples per partitioned update; 0 = time-domain update every sample
    bin_floor_db: float = -30.0
    delay_tolerance_samples: float = 0.0  # the update's trusted band, below fs / (6 x this) (0 = full band)
    variable_step: bool = False       # time-domain update: the step follows the gradient's consistency
    variable_step_time_constant_ms: float = 200.0
    variable_step_consistency: float = 0.01
    variable_step_min: float = 0.1
    variable_step_doubling_ms: float = 40.0   # the fastest the step's fraction may grow: x2 in this time
    weight_average_ms: float = 300.0  # with the variable step: the played weights' average at the step's floor (0 = none)
    # On-the-fly re-identification (device.core.dsp.tracking): the probe the callback plays,
    # preallocated here; 0 s = no probe, the engine cannot re-identify.
    reidentify_probe_s: float = 0.0
    reidentify_probe_level_dbfs: float = -30.0
    probe_fade_ms: float = 20.0
    probe_seed: int = 1

    @classmethod
    def from_config(cls, cfg: Config, sample_rate: int | None = None, block_size: int | None = None,
                    secondary_path: np.ndarray | None = None) -> "ControllerSettings":
        taps = cfg.controller.taps
        if taps == "auto":
            # Identification resolves `auto` with what it measured of the rig (simulate does);
            # from a stored estimate alone, the length follows the estimate's ring-down.
            if secondary_path is None:
                raise UserError("controller.taps: auto needs a secondary-path estimate to size the controller")
            taps = recommended_controller_taps(secondary_path.size, int(np.argmax(np.abs(secondary_path))), None,
                                               controller_tap_budget(cfg.controller))
        return cls(
            sample_rate=sample_rate or cfg.audio.sample_rate,
            block_size=block_size or cfg.audio.block_size,
            taps=int(taps),
            step_size=cfg.controller.step_size,
            leakage=cfg.controller.leakage,
            regularization=cfg.controller.regularization,
            output_ceiling=10.0 ** (cfg.safety.output_ceiling_dbfs / 20.0),
            limiter_release_ms=cfg.safety.limiter_release_ms,
            fade_ms=cfg.safety.fade_ms,
            ramp_ms=cfg.anc.ramp_ms,
            baseline_ms=cfg.safety.baseline_ms,
            watchdog_rise_db=cfg.safety.watchdog_rise_db,
            watchdog_hold_ms=cfg.safety.watchdog_hold_ms,
            max_weight_norm=cfg.safety.max_weight_norm,
            step_backoff=cfg.safety.step_backoff,
            min_step_size=cfg.safety.min_step_size,
            enabled=cfg.anc.enabled,
            intensity=cfg.anc.intensity,
            highpass_hz=cfg.controller.highpass_hz,
            sustained_rise_db=cfg.safety.sustained_rise_db,
            sustained_hold_ms=cfg.safety.sustained_hold_ms,
            mode=cfg.anc.mode,
            hear_through_taps=cfg.anc.hear_through_taps,
            hear_through_gain_db=cfg.anc.hear_through_gain_db,
            update_block=cfg.controller.update_block if cfg.controller.algorithm == "partitioned" else 0,
            bin_floor_db=cfg.controller.bin_floor_db,
            delay_tolerance_samples=cfg.controller.delay_tolerance_samples,
            variable_step=cfg.controller.variable_step,
            reidentify_probe_s=cfg.controller.reidentify_probe_s if cfg.controller.reidentify else 0.0,
            reidentify_probe_level_dbfs=cfg.controller.reidentify_probe_level_dbfs,
            probe_fade_ms=cfg.identification.fade_ms,
            probe_seed=cfg.identification.seed,
        )


@dataclass(frozen=True)
class SafetyEvent:
    sample_index: int
    time_s: float
    kind: str
    value: float
    step_size: float          # step size in force when the event happened
    details: dict | None = None   # what an event from the worker side adds (a re-identification's figures)

    def to_dict(self) -> dict:
        return {
            "time_s": round(self.time_s, 4),
            "kind": self.kind,
            "value": round(self.value, 3),
            "step_size": self.step_size,
            **(self.details or {}),
        }


def _butterworth(cutoff_hz: float, sample_rate: int, highpass: bool) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """2nd-order Butterworth by the bilinear transform with pre-warping: the same (b, a) as
    scipy.signal.butter(2, cutoff_hz, "highpass" or "lowpass", fs=sample_rate), without
    importing scipy.signal, which costs seconds of start-up on a Raspberry Pi."""
    k = math.tan(math.pi * cutoff_hz / sample_rate)
    norm = 1.0 / (1.0 + math.sqrt(2.0) * k + k * k)
    gain = norm if highpass else k * k * norm
    b = (gain, -2.0 * gain if highpass else 2.0 * gain, gain)
    a = (1.0, 2.0 * (k * k - 1.0) * norm, (1.0 - math.sqrt(2.0) * k + k * k) * norm)
    return b, a


def butterworth_highpass(cutoff_hz: float, sample_rate: int) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    return _butterworth(cutoff_hz, sample_rate, highpass=True)


def butterworth_lowpass(cutoff_hz: float, sample_rate: int) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    return _butterworth(cutoff_hz, sample_rate, highpass=False)


def trusted_band_hz(delay_tolerance_samples: float, sample_rate: int) -> float | None:
    """Highest frequency whose phase a delay error of `delay_tolerance_samples` turns by at
    most 60 degrees (fs / (6 x tolerance), the partitioned update's trusted bins); None when
    that is the whole band (tolerance 0, or at most a third of a sample)."""
    if delay_tolerance_samples <= 0.0:
        return None
    cutoff = trusted_bins(sample_rate, delay_tolerance_samples)  # bins of an FFT of fs points are hertz
    return cutoff if cutoff < 0.45 * sample_rate else None


def time_update_state_size(taps: int) -> int:
    """Floats of `update_state` for the time-domain update: the variable step's two vectors,
    the played weights' average and the band-limited update's scratch, history and states
    (`device.core.dsp.fxlms`), sized for the longest controller so that ears of different
    lengths stack (EarsEngine)."""
    longest = max(taps, LONGEST_TAPS)
    return 4 * longest + L.BAND_LEAK_TAIL + 2 * history_length(longest, 0) + L.BAND_STATE


def _samples(ms: float, sample_rate: int) -> float:
    return max(1.0, ms * 1e-3 * sample_rate)


class AncEngine:
    """Normalized leaky FxLMS controller with output safety.

    Starts muted, measures the uncontrolled error level for `baseline_ms`, then fades in.
    `process` is real-time safe: no allocation, one nogil numba call.
    """

    def __init__(
        self,
        settings: ControllerSettings,
        secondary_path: np.ndarray,
        feedback_path: np.ndarray | None = None,
    ):
        # The engine's own copy: a re-identification writes a new estimate into it.
        secondary_path = np.array(secondary_path, dtype=np.float64, copy=True, order="C")
        if secondary_path.ndim != 1 or secondary_path.size < 2:
            raise UserError(f"secondary path estimate: expected a 1-D filter of at least 2 taps, got shape {secondary_path.shape}")
        if not np.all(np.isfinite(secondary_path)) or not np.any(secondary_path):
            raise UserError("secondary path estimate: contains NaN/Inf or is all zeros; run identification again")
        self.settings = settings
        self.sample_rate = settings.sample_rate
        self.block_size = settings.block_size
        taps = settings.taps
        self.secondary_path = secondary_path
        if feedback_path is None:
            self.feedback_path = np.zeros(0)
        else:
            self.feedback_path = np.ascontiguousarray(feedback_path, dtype=np.float64)
            if not np.all(np.isfinite(self.feedback_path)):
                raise UserError("feedback path estimate: contains NaN/Inf; run identification again")
        path_taps = secondary_path.size
        self.weights = np.zeros(taps)
        self.reference_buffer = np.zeros(2 * max(taps, path_taps))
        self.filtered_buffer = np.zeros(2 * history_length(taps, settings.update_block))
        band_limited = trusted_band_hz(settings.delay_tolerance_samples, settings.sample_rate) is not None
        self.update_state = np.zeros(state_size(settings.update_block) if settings.update_block > 0 else
                                     time_update_state_size(taps) if settings.variable_step or band_limited else 0)
        self.twiddles = make_twiddles(2 * settings.update_block) if settings.update_block > 0 else np.zeros(0)
        self.output_buffer = np.zeros(2 * max(self.feedback_path.size, path_taps))
        self.params = np.zeros(L.N_PARAMS)
        self.status = np.zeros(L.N_STATUS)
        self.cursors = np.zeros(L.N_CURSORS, dtype=np.int64)
        self.events = np.zeros((EVENT_CAPACITY, L.EVENT_FIELDS))
        self._events_read = 0
        self._enabled = settings.enabled
        self._intensity = settings.intensity
        self._mode = settings.mode
        # The equalizer reads the reference history, which holds max(taps, path_taps) samples.
        hear_taps = min(settings.hear_through_taps, self.reference_buffer.size // 2)
        self.hear_through = np.ascontiguousarray(
            design_equalizer(secondary_path, hear_taps, settings.hear_through_gain_db, settings.sample_rate))
        # Re-identification on the fly: the command word, the probe and the arrays a new
        # estimate is prepared in off the callback (`device.core.dsp.tracking`).
        self.tracking = T.new_tracking()
        probe_samples = int(round(settings.reidentify_probe_s * settings.sample_rate))
        self.probe = (make_probe(probe_samples, settings.reidentify_probe_level_dbfs,
                                 int(settings.probe_fade_ms * 1e-3 * settings.sample_rate), settings.probe_seed + 1)
                      if probe_samples > 0 else np.zeros(0))
        self.secondary_candidate = np.zeros(path_taps)
        self.hear_candidate = np.zeros(self.hear_through.size)
        self.weights_candidate = np.zeros(taps)
        self._extra_events: list[SafetyEvent] = []
        self._stopping = False
        self.bind_kernel_state()
        self.base_step_size = settings.step_size
        self.step_factor = 1.0
        self._configure(settings)
        self.reset()

    @classmethod
    def from_config(
        cls,
        cfg: Config,
        secondary_path: np.ndarray,
        feedback_path: np.ndarray | None = None,
        sample_rate: int | None = None,
        block_size: int | None = None,
    ) -> "AncEngine":
        settings = ControllerSettings.from_config(cfg, sample_rate, block_size, np.asarray(secondary_path))
        if not cfg.controller.feedback_neutralization:
            feedback_path = None
        return cls(settings, secondary_path, feedback_path)

    def _configure(self, s: ControllerSettings) -> None:
        fs = s.sample_rate
        p = self.params
        p[L.P_STEP] = s.step_size
        p[L.P_LEAKAGE] = s.leakage
        p[L.P_REGULARIZATION] = s.regularization
        p[L.P_USER_TARGET] = s.intensity if s.enabled and s.mode == "anc" else 0.0
        p[L.P_HEAR_TARGET] = 1.0 if s.enabled and s.mode == "hear-through" else 0.0  # the worker decides later
        p[L.P_OUTPUT_SCALE] = 1.0
        p[L.P_USER_RATE] = 1.0 / _samples(s.ramp_ms, fs)
        p[L.P_FADE_RATE] = 1.0 / _samples(s.fade_ms, fs)
        p[L.P_TRIP_RATE] = 1.0 / _samples(s.trip_fade_ms, fs)
        p[L.P_CEILING] = s.output_ceiling
        p[L.P_RELEASE] = 1.0 - math.exp(-1.0 / _samples(s.limiter_release_ms, fs))
        p[L.P_RISE] = 10.0 ** (s.watchdog_rise_db / 10.0)
        p[L.P_HOLD] = _samples(s.watchdog_hold_ms, fs)
        p[L.P_MAX_NORM] = s.max_weight_norm
        p[L.P_BACKOFF] = s.step_backoff
        p[L.P_MIN_STEP] = s.min_step_size
        p[L.P_BASELINE] = _samples(s.baseline_ms, fs)
        p[L.P_POWER_COEF] = 1.0 - math.exp(-1.0 / _samples(s.power_time_constant_ms, fs))
        p[L.P_STOP] = 0.0
        p[L.P_ADAPT] = 1.0
        p[L.P_FLOOR] = 10.0 ** (s.watchdog_floor_dbfs / 10.0)
        # The sustained-rise watchdog smooths over half its hold time.
        p[L.P_SLOW_COEF] = 1.0 - math.exp(-1.0 / _samples(s.sustained_hold_ms / 2.0, fs))
        p[L.P_SLOW_RISE] = 10.0 ** (s.sustained_rise_db / 10.0)
        p[L.P_SLOW_HOLD] = _samples(s.sustained_hold_ms, fs)
        b, a = butterworth_highpass(s.highpass_hz, fs)
        p[L.P_HP_B0], p[L.P_HP_B1], p[L.P_HP_B2] = b
        p[L.P_HP_A1], p[L.P_HP_A2] = a[1], a[2]
        p[L.P_UPDATE_BLOCK] = s.update_block
        p[L.P_BIN_FLOOR] = 10.0 ** (s.bin_floor_db / 10.0)
        p[L.P_DELAY_TOLERANCE] = s.delay_tolerance_samples
        band = trusted_band_hz(s.delay_tolerance_samples, fs) if s.update_block == 0 else None
        if band is None:
            p[L.P_BAND_B0] = p[L.P_BAND_B1] = p[L.P_BAND_B2] = p[L.P_BAND_A1] = p[L.P_BAND_A2] = 0.0
            p[L.P_BAND_LEAK] = p[L.P_LEAK_B0] = p[L.P_LEAK_B1] = p[L.P_LEAK_B2] = p[L.P_LEAK_A1] = p[L.P_LEAK_A2] = 0.0
        else:
            b, a = butterworth_lowpass(band, fs)
            p[L.P_BAND_B0], p[L.P_BAND_B1], p[L.P_BAND_B2] = b
            p[L.P_BAND_A1], p[L.P_BAND_A2] = a[1], a[2]
            p[L.P_BAND_LEAK] = 1.0 / _samples(BAND_LEAK_TIME_CONSTANT_MS, fs)
            # The leak starts where the tolerated delay error turns the phase by 90 degrees.
            b, a = butterworth_lowpass(min(1.5 * band, 0.45 * fs), fs)
            p[L.P_LEAK_B0], p[L.P_LEAK_B1], p[L.P_LEAK_B2] = b
            p[L.P_LEAK_A1], p[L.P_LEAK_A2] = a[1], a[2]
        p[L.P_VSS_COEF] = (1.0 - math.exp(-s.block_size / _samples(s.variable_step_time_constant_ms, fs))
                           if s.variable_step and s.update_block == 0 else 0.0)
        p[L.P_VSS_CONSISTENCY] = s.variable_step_consistency
        p[L.P_VSS_MIN] = s.variable_step_min
        p[L.P_VSS_RISE] = (2.0 ** (s.block_size / _samples(s.variable_step_doubling_ms, fs))
                           if s.variable_step_doubling_ms > 0 else 0.0)
        p[L.P_AVERAGE_COEF] = (1.0 - math.exp(-s.block_size / _samples(s.weight_average_ms, fs))
                               if p[L.P_VSS_COEF] > 0.0 and s.weight_average_ms > 0 else 0.0)

    def reset(self) -> None:
        """Back to the start: weights zero, muted, measuring the baseline again."""
        for array in (self.weights, self.reference_buffer, self.filtered_buffer, self.output_buffer,
                      self.status, self.events, self.update_state):
            array[...] = 0.0
        self.cursors[...] = 0
        self.status[L.S_MODE] = L.MODE_BASELINE
        self.status[L.S_LIMITER_GAIN] = 1.0
        self.status[L.S_STEP] = 1.0
        self.status[L.S_USER_GAIN] = self.params[L.P_USER_TARGET]
        self.status[L.S_HEAR_GAIN] = self.params[L.P_HEAR_TARGET]
        self.status[L.S_OUTPUT_GAIN] = self.params[L.P_OUTPUT_SCALE]
        self.params[L.P_STOP] = 0.0
        self._events_read = 0
        self.tracking[...] = T.new_tracking()
        self._extra_events = []
        self._stopping = False

    def bind_kernel_state(self) -> None:
        """What `engine_block` (`device.core.dsp.tracking`) takes after the three blocks, in its
        order: the re-identification's arrays, then `process_block`'s. The one list of the
        engine's state, for `process` and for a simulator that calls the kernel from numba.
        Called again by an owner that moves the arrays (`EarsEngine` stacks every ear's)."""
        self.kernel_state = (self.tracking, self.probe, self.secondary_candidate, self.hear_candidate,
                             self.weights_candidate, self.weights, self.secondary_path, self.feedback_path, self.reference_buffer,
                             self.filtered_buffer, self.output_buffer, self.params, self.status, self.cursors,
                             self.events, self.hear_through, self.update_state, self.twiddles)

    # -- the real-time call --------------------------------------------------------------
    def process(self, reference: np.ndarray, error: np.ndarray, out: np.ndarray) -> None:
        """One block: contiguous 1-D float32/float64 arrays of equal length; `out` is written."""
        T.engine_block(reference, error, out, *self.kernel_state)

    def warm_up(self) -> None:
        """Compile (or load from the numba cache) the kernel for float32 and float64 blocks,
        then restore the initial state, so the first real callback runs at full speed."""
        saved = [a.copy() for a in (self.weights, self.status, self.cursors, self.tracking)]
        for dtype in (np.float32, np.float64):
            block = np.zeros(self.block_size, dtype=dtype)
            self.process(block, block.copy(), np.zeros(self.block_size, dtype=dtype))
        self.weights[...], self.status[...], self.cursors[...], self.tracking[...] = saved
        for array in (self.reference_buffer, self.filtered_buffer, self.output_buffer, self.update_state):
            array[...] = 0.0

    # -- settings, applied at the next block ---------------------------------------------
    def _apply_targets(self) -> None:
        """The speaker's two sources from enabled, intensity and mode; the kernel crossfades
        to the new targets over `anc.ramp_ms`. The weights stay (frozen) in hear-through.
        `enabled` gates the anti-noise; the mode is the one the worker settled on (it turns
        the wearer's hear-through off with anc_enabled false, but not an alarm's)."""
        self.params[L.P_USER_TARGET] = self._intensity if self._enabled and self._mode == "anc" else 0.0
        self.params[L.P_HEAR_TARGET] = 1.0 if self._mode == "hear-through" else 0.0

    def set_enabled(self, enabled: bool) -> None:
        self._enabled = bool(enabled)
        self._apply_targets()

    def set_intensity(self, intensity: float) -> None:
        if not 0.0 <= intensity <= 1.0 or not math.isfinite(intensity):
            raise UserError(f"anc_intensity: {intensity} is out of range [0, 1]")
        self._intensity = float(intensity)
        self._apply_targets()

    def set_mode(self, mode: str) -> None:
        """off, anc or hear-through (`device.contract.config.ANC_MODES`), from the next block."""
        if mode not in ANC_MODES:
            raise UserError(f"anc_mode: {mode!r} is not one of {', '.join(ANC_MODES)}")
        self._mode = mode
        self._apply_targets()

    def apply_preset(self, step_size: float, leakage: float, intensity: float) -> None:
        """Switch controller settings (a noise-class preset): step and leakage take effect at
        the next block (the weights carry on), intensity ramps."""
        self.base_step_size = float(step_size)
        self.params[L.P_STEP] = step_size * self.step_factor
        self.params[L.P_LEAKAGE] = leakage
        self.set_intensity(intensity)

    def set_step_factor(self, factor: float) -> None:
        """Scale the preset's step size (the worker's no-harm guard); 1.0 = as configured."""
        self.step_factor = float(factor)
        self.params[L.P_STEP] = self.base_step_size * self.step_factor

    @property
    def output_scale(self) -> float:
        return float(self.params[L.P_OUTPUT_SCALE])

    def set_output_scale(self, scale: float) -> None:
        """Scale the anti-noise under the user's intensity (the worker's no-harm scale, 0..1),
        ramped like the intensity. Adaptation neither pauses for it nor learns to compensate
        (the modified-FxLMS error does not see what was played)."""
        if not 0.0 <= scale <= 1.0 or not math.isfinite(scale):
            raise ValueError(f"output scale {scale} outside [0, 1]")
        self.params[L.P_OUTPUT_SCALE] = scale

    def set_adaptation(self, adapt: bool) -> None:
        self.params[L.P_ADAPT] = 1.0 if adapt else 0.0

    def fade_out(self) -> None:
        """Fade to silence over `fade_ms`; `is_silent` turns True when done."""
        self._stopping = True
        self.params[L.P_STOP] = 1.0

    # -- re-identification (the worker's `PathTracker` drives these) ---------------------
    @property
    def can_reidentify(self) -> bool:
        return self.probe.size > 0 and not self._stopping

    @property
    def probe_state(self) -> float:
        return float(self.tracking[T.T_STATE])

    @property
    def probe_start_sample(self) -> int | None:
        start = self.tracking[T.T_PROBE_START]
        return None if start < 0 else int(start)

    def request_probe(self) -> None:
        """Fade the anti-noise out and play the probe once (from the next block on)."""
        self.tracking[T.T_COMMAND] = T.CMD_PROBE

    def resume(self, estimate: np.ndarray | None, weight_scale: float, step_factor: float,
               weights: np.ndarray | None = None) -> None:
        """After a probe: swap in `estimate` (None: keep the one in use) and, with it, start
        from `weights` when given; scale the weights (0 = start from zero), restart from the
        baseline with the kernel's step factor `step_factor`, and fade in. The arrays are
        prepared here, off the callback, and the command word is written last; the callback
        takes it at the start of its next block."""
        self.tracking[T.T_NEW_WEIGHTS] = 0.0
        if estimate is not None and weights is not None:
            np.copyto(self.weights_candidate, weights)
            self.tracking[T.T_NEW_WEIGHTS] = 1.0
        if estimate is not None:
            estimate = np.asarray(estimate, dtype=np.float64)
            if estimate.shape != self.secondary_candidate.shape or not np.all(np.isfinite(estimate)):
                raise ValueError(f"new secondary-path estimate: expected {self.secondary_candidate.size} finite taps")
            np.copyto(self.secondary_candidate, estimate)
            np.copyto(self.hear_candidate, design_equalizer(estimate, self.hear_candidate.size,
                                                            self.settings.hear_through_gain_db, self.sample_rate))
        self.tracking[T.T_WEIGHT_SCALE] = weight_scale
        self.tracking[T.T_STEP] = step_factor
        if self._stopping:
            return   # the session is ending: it stays faded out
        self.tracking[T.T_COMMAND] = T.CMD_RESUME_NEW if estimate is not None else T.CMD_RESUME_OLD

    def add_event(self, kind: str, value: float, details: dict | None = None) -> SafetyEvent:
        """An event of the worker's (a re-identification) among the kernel's, at the current sample."""
        sample = int(self.status[L.S_SAMPLES])
        event = SafetyEvent(sample, sample / self.sample_rate, kind, float(value), self.step_size, details)
        self._extra_events.append(event)
        return event

    # -- read-outs (from the worker, never the callback) ---------------------------------
    @property
    def enabled(self) -> bool:
        return self._enabled

    @property
    def intensity(self) -> float:
        return self._intensity

    @property
    def speaker_mode(self) -> str:
        """What the speaker plays: off, anc (off while anti-noise is disabled) or hear-through."""
        return "off" if self._mode == "anc" and not self._enabled else self._mode

    @property
    def is_silent(self) -> bool:
        return self.status[L.S_MODE] == L.MODE_STOP and self.status[L.S_SAFETY_GAIN] <= 0.0

    @property
    def mode(self) -> str:
        return {L.MODE_BASELINE: "baseline", L.MODE_RUN: "run", L.MODE_TRIP: "trip", L.MODE_STOP: "stop"}[
            float(self.status[L.S_MODE])
        ]

    @property
    def step_size(self) -> float:
        p = self.params
        return max(p[L.P_STEP] * self.status[L.S_STEP], min(p[L.P_MIN_STEP], p[L.P_STEP]))

    def snapshot(self) -> dict:
        s = self.status
        return {
            "mode": self.mode,
            "samples": int(s[L.S_SAMPLES]),
            "step_size": self.step_size,
            "output_scale": self.output_scale,
            "leakage": float(self.params[L.P_LEAKAGE]),
            "user_gain": float(s[L.S_USER_GAIN]),
            "hear_through_gain": float(s[L.S_HEAR_GAIN]),
            "safety_gain": float(s[L.S_SAFETY_GAIN]),
            "limiter_gain_db": 20.0 * math.log10(max(s[L.S_LIMITER_GAIN], 1e-12)),
            "weight_norm": float(s[L.S_WEIGHT_NORM]),
            "watchdog_trips": int(s[L.S_TRIPS]),
            "nonfinite_inputs": int(s[L.S_NONFINITE_INPUTS]),
            "limited_samples": int(s[L.S_LIMITED_SAMPLES]),
            "peak_output": float(s[L.S_PEAK_OUT]),
            "uncontrolled_ratio_db": 10.0 * math.log10(s[L.S_RATIO]) if s[L.S_RATIO] > 0 else None,
        }

    def drain_events(self) -> list[SafetyEvent]:
        """Safety events written since the last call (oldest first; the ring keeps the last 256)."""
        written = int(self.status[L.S_EVENTS])
        start = max(self._events_read, written - EVENT_CAPACITY)
        drained = []
        for index in range(start, written):
            sample, code, value, step = self.events[index % EVENT_CAPACITY]
            drained.append(SafetyEvent(
                sample_index=int(sample),
                time_s=sample / self.sample_rate,
                kind=L.EVENT_NAMES.get(int(code), f"code_{int(code)}"),
                value=float(value),
                step_size=float(step),
            ))
        self._events_read = written
        if self._extra_events:
            drained = sorted(drained + self._extra_events, key=lambda event: event.sample_index)
            self._extra_events = []
        return drained
