"""Re-identification of the secondary path on the fly: the callback side and the estimate.

The path changes under the controller when an earcup moves or a duct speaker's mount shifts;
FxLMS with a stale estimate then diverges (the watchdog trips, backs off, and at its minimum
step gives up) or converges to much less. Recovery is a short re-identification with the
anti-noise faded out, the same on every backend:

  callback  `engine_block` is the one nogil call per block (`AncEngine.process` and the
            simulator's compiled loop both make it). It runs `process_block` and, on the
            owner's command, fades the anti-noise out (the kernel's stop fade), plays the
            preallocated probe into the speaker block once the output is silent, and at the
            start of a block swaps in a prepared estimate (plain copies into the kernel's own
            arrays) and restarts the kernel from its baseline with a fade-in.
  worker    `device.core.tracking.PathTracker` decides when to check, records what the probe
            played and what the error mic heard from the block ring, estimates the path
            (`estimate_path`) and compares it with the one in use (`path_change_db`).

The owner writes the candidate arrays first and the command last: one float store, read once
at the start of the next block, is the only hand-over (no lock).
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from device.core.dsp.fxlms import process_block
from device.core.dsp.layout import (
    MODE_BASELINE,
    MODE_TRIP,
    P_STOP,
    S_BASELINE_COUNT,
    S_BASELINE_ERROR,
    S_BASELINE_REFERENCE,
    S_HOLD,
    S_LIMIT_HOLD,
    S_MODE,
    S_SAFETY_GAIN,
    S_SAMPLES,
    S_SLOW_HOLD,
    S_STEP,
    S_UPDATE_FILL,
    S_XF_POWER,
)

# tracking: the small array the owner and `engine_block` share
T_COMMAND = 0        # CMD_*, written by the owner (last), cleared by the callback when taken
T_STATE = 1          # STATE_*, written by the callback
T_PROBE_START = 2    # sample index (the kernel's S_SAMPLES) of the probe's first sample; -1 before
T_PROBE_PLAYED = 3   # probe samples played so far
T_WEIGHT_SCALE = 4   # factor on the weights at a resume (0 = start from zero)
T_STEP = 5           # the kernel's step factor (status[S_STEP]) at a resume
T_NEW_WEIGHTS = 6    # 1 = a resume with a new estimate starts from the prepared weights (then scaled)
N_TRACKING = 7

CMD_NONE = 0.0
CMD_PROBE = 1.0      # fade out, then play the probe once
CMD_RESUME_NEW = 2.0  # swap in the candidate estimate, restart from the baseline, fade in
CMD_RESUME_OLD = 3.0  # restart from the baseline with the estimate in use

STATE_IDLE = 0.0
STATE_FADING = 1.0   # anti-noise fading out before the probe
STATE_PROBING = 2.0  # the probe is playing
STATE_PLAYED = 3.0   # the probe has been played; the kernel stays silent until a resume


def new_tracking() -> np.ndarray:
    tracking = np.zeros(N_TRACKING)
    tracking[T_NEW_WEIGHTS] = 0.0
    tracking[T_PROBE_START] = -1.0
    tracking[T_WEIGHT_SCALE] = 1.0
    tracking[T_STEP] = 1.0
    return tracking


@nb.njit(cache=True)
def _resume(tracking, swap, candidate, hear_candidate, weights_candidate, weights, secondary_path, filtered_buffer,
            output_buffer, params, status, hear_through, update_state):
    if swap and candidate.shape[0] == secondary_path.shape[0]:
        secondary_path[:] = candidate
        if hear_candidate.shape[0] == hear_through.shape[0]:
            hear_through[:] = hear_candidate
        if tracking[T_NEW_WEIGHTS] > 0.5 and weights_candidate.shape[0] == weights.shape[0]:
            weights[:] = weights_candidate
    scale = tracking[T_WEIGHT_SCALE]
    for k in range(weights.shape[0]):
        weights[k] *= scale
    # The filtered reference was made with the old estimate; the outputs kept for d_hat were
    # silence and the probe, which the kernel never played.
    filtered_buffer[:] = 0.0
    output_buffer[:] = 0.0
    update_state[:] = 0.0
    status[S_XF_POWER] = 0.0
    status[S_UPDATE_FILL] = 0.0
    status[S_HOLD] = 0.0
    status[S_LIMIT_HOLD] = 0.0
    status[S_SLOW_HOLD] = 0.0
    status[S_BASELINE_ERROR] = 0.0
    status[S_BASELINE_REFERENCE] = 0.0
    status[S_BASELINE_COUNT] = 0.0
    status[S_SAFETY_GAIN] = 0.0
    status[S_STEP] = tracking[T_STEP]
    status[S_MODE] = MODE_BASELINE   # the uncontrolled level again, then the usual fade-in
    params[P_STOP] = 0.0
    tracking[T_STATE] = STATE_IDLE
    tracking[T_PROBE_START] = -1.0
    tracking[T_PROBE_PLAYED] = 0.0


@nb.njit(cache=True, nogil=True)
def engine_block(reference, error, out, tracking, probe, candidate, hear_candidate, weights_candidate, weights,
                 secondary_path,
                 feedback_path, reference_buffer, filtered_buffer, output_buffer, params, status, cursors, events,
                 hear_through, update_state, twiddles):
    """One block: the owner's command (taken at the block's start), the controller
    (`process_block`), then the probe added to the speaker block while one plays. No
    allocation; the arrays after `weights_candidate` are `process_block`'s."""
    command = tracking[T_COMMAND]
    if command == CMD_PROBE and status[S_MODE] == MODE_TRIP:
        pass   # the watchdog's own reset first (it counts the trip), then the probe
    elif command != CMD_NONE:
        tracking[T_COMMAND] = CMD_NONE
        if command == CMD_PROBE and tracking[T_STATE] == STATE_IDLE and probe.shape[0] > 0:
            params[P_STOP] = 1.0
            tracking[T_STATE] = STATE_FADING
        elif command == CMD_RESUME_NEW or command == CMD_RESUME_OLD:
            _resume(tracking, command == CMD_RESUME_NEW, candidate, hear_candidate, weights_candidate, weights,
                    secondary_path, filtered_buffer, output_buffer, params, status, hear_through, update_state)
    process_block(reference, error, out, weights, secondary_path, feedback_path, reference_buffer, filtered_buffer,
                  output_buffer, params, status, cursors, events, hear_through, update_state, twiddles)
    state = tracking[T_STATE]
    if state == STATE_PROBING:
        played = int(tracking[T_PROBE_PLAYED])
        count = min(out.shape[0], probe.shape[0] - played)
        for i in range(count):
            out[i] += probe[played + i]
        played += count
        tracking[T_PROBE_PLAYED] = played
        if played >= probe.shape[0]:
            tracking[T_STATE] = STATE_PLAYED
    elif state == STATE_FADING and status[S_SAFETY_GAIN] <= 0.0:
        # Silent from the next block on: the probe starts there, alone in the speaker.
        tracking[T_STATE] = STATE_PROBING
        tracking[T_PROBE_START] = status[S_SAMPLES]
        tracking[T_PROBE_PLAYED] = 0.0


# -- the worker's side -------------------------------------------------------------------------

def path_change_db(in_use: np.ndarray, measured: np.ndarray) -> float:
    """The normalized misalignment of the estimate in use against the one just measured,
    10 log10(|s_in_use - s_measured|^2 / |s_measured|^2) in dB: 0 dB is an error as large as
    the path, a reversed path is +6 dB, a 30% gain error -10.5 dB. FxLMS converges while the
    estimate's phase is within 90 degrees of the path's; a misalignment this measure puts
    under about -10 dB leaves the phase well inside that at every frequency the path carries."""
    size = min(in_use.size, measured.size)
    difference = float(np.sum((in_use[:size] - measured[:size]) ** 2) + np.sum(in_use[size:] ** 2)
                       + np.sum(measured[size:] ** 2))
    return 10.0 * math.log10(max(difference, 1e-300) / max(float(np.dot(measured, measured)), 1e-300))


def carried_weights(weights: np.ndarray, in_use: np.ndarray, measured: np.ndarray, floor_db: float = -30.0) -> np.ndarray:
    """The controller for the new path that makes the same anti-noise at the error mic as
    `weights` made through the old: W_new = W S_old / S_new, in the frequency domain with S_new
    floored at `floor_db` under its peak (where the speaker hardly reaches nothing is asked of
    it), causal part kept, as long as `weights`. A moved cup or speaker changes the delay,
    the gain and the resonance; what the controller learnt of the noise (its -P) stays."""
    taps = weights.size
    size = 1 << int(math.ceil(math.log2(2 * (taps + max(in_use.size, measured.size)))))
    w = np.fft.rfft(weights, size)
    old = np.fft.rfft(in_use, size)
    new = np.fft.rfft(measured, size)
    floor = (10.0 ** (floor_db / 20.0) * np.max(np.abs(new))) ** 2
    carried = np.fft.irfft(w * old * np.conj(new) / (np.abs(new) ** 2 + floor), size)
    return np.ascontiguousarray(carried[:taps])


AMBIENT_TAPS = 512       # reference-to-error filter that takes the ambient noise out of the recording
AMBIENT_LEAD = 96        # samples the error mic may hear the noise before the reference mic
PASSES = 2               # alternations between the ambient and the path fits


def estimate_path(played: np.ndarray, recorded: np.ndarray, reference: np.ndarray | None, taps: int,
                  ambient_taps: int = AMBIENT_TAPS, lead: int = AMBIENT_LEAD) -> tuple[np.ndarray, float]:
    """(estimate, expected error dB): the least-squares FIR of `taps` from what the speaker
    played to what the error mic recorded (same stream clock), and its expected error,
    taps x residual power / (rows x probe power x |estimate|^2) as in
    `identification.identify_path`.

    The anti-noise is off but the noise is not: at the error mic it is louder than a -30 dBFS
    probe (measured: 9 dB louder on the headphone's engine hum), and left in the residual it
    made the estimate's error -9 dB, too noisy for FxLMS on tones. What the reference mic
    predicts of it is taken out first: a second least-squares FIR, from the reference (led by
    `lead` samples: the error mic may hear the noise first) to the recording, alternated with
    the path's fit. The probe is independent of the noise, so neither fit biases the other;
    `reference` must not carry the probe (subtract the feedback estimate's share first)."""
    from device.core.dsp.lsfir import apply_fir, cross_correlation, normal_equations, solve_fir

    played = np.asarray(played, dtype=np.float64)
    recorded = np.asarray(recorded, dtype=np.float64)
    n = min(played.size, recorded.size) - (lead if reference is not None else 0)
    start = max(taps, ambient_taps) - 1
    if n - start < 4 * taps:
        raise ValueError(f"re-identification needs at least {start + 4 * taps} samples, got {n}")
    played, target = played[:n], recorded[:n]
    R, p_played = normal_equations(played, target, taps, start, n)
    ambient = np.zeros(n)
    if reference is None or not np.any(reference):
        estimate = solve_fir(R, p_played)
    else:
        led = np.asarray(reference, dtype=np.float64)[lead:lead + n]
        R_ambient, _ = normal_equations(led, target, ambient_taps, start, n)
        for _ in range(PASSES):
            estimate = solve_fir(R, cross_correlation(played, target - ambient, taps, start, n))
            speaker = apply_fir(estimate, played)
            ambient = apply_fir(solve_fir(R_ambient, cross_correlation(led, target - speaker, ambient_taps, start, n)), led)
        estimate = solve_fir(R, cross_correlation(played, target - ambient, taps, start, n))
    residual = (target - apply_fir(estimate, played) - ambient)[start:n]
    rows = n - start
    probe_power = float(np.dot(played[start:n], played[start:n])) / rows
    noise_per_tap = float(np.dot(residual, residual)) / rows / max(rows * probe_power, 1e-300)
    energy = float(np.dot(estimate, estimate))
    expected = 10.0 * math.log10(max(taps * noise_per_tap, 1e-300) / max(energy, 1e-300))
    return estimate, expected

