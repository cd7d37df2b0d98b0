"""Normalized leaky FxLMS with output safety, one audio block per call.

`process_block` is the only thing the audio callback runs: a single `nogil` numba call that
takes a block of reference and error microphone samples and writes a block of anti-noise,
sample by sample, with all state in preallocated arrays (see `device.core.dsp.layout`).

Per sample n:
  1. reference r(n), high-passed below the speaker's range, minus the estimated speaker
     leak when a feedback path is given
  2. filtered reference x'(n) = s_hat * r, and its power over the filter length
  3. modified-FxLMS error e'(n) = d_hat(n) + w . x'(n), with d_hat = e - s_hat * y_played
     the disturbance estimate: the error the current weights would leave. It takes the
     loop delay out of the adaptation (plain FxLMS must keep the step below ~1/latency,
     which makes multi-tone noise converge in seconds), and it keeps fades, intensity < 1
     and the limiter from teaching the filter to compensate for them.
  4. update the weights, by one of two algorithms (`controller.algorithm`, `P_UPDATE_BLOCK`):
     time:        every sample, w <- (1 - leakage) w - mu e'(n) x'(n) / (regularization + |x'|^2)
                  (the default: docs/cancellation.md says why); with `P_BAND_B0` != 0 both
                  e' and x' pass through the same low-pass first (`P_BAND_*`) and |x'|^2 is
                  the low-passed power: the weights adapt only where an estimate whose delay
                  is `P_DELAY_TOLERANCE` samples off still points downhill (the partitioned
                  update's trusted band, in the time domain); the output stays full band.
                  Every BAND_LEAK_SAMPLES adapted samples the weights' response above the
                  point where that delay error turns the phase past 90 degrees decays
                  (`_band_leak`, `P_BAND_LEAK`, `P_LEAK_*`): what the low-pass lets through
                  there would otherwise grow, slowly, the wrong way
     partitioned: every B samples (`controller.update_block`, independent of the audio block:
                  a partial update block carries over in `status`), the block's gradient in
                  the frequency domain per partition of B taps, each bin normalized by its own
                  smoothed filtered-reference power, the bins a delay error of
                  `P_DELAY_TOLERANCE` samples could turn past 60 degrees not updated
                  (`device.core.dsp.partitioned`). The
                  weights stay fixed within the update block, the output stays w . r every
                  sample: no added latency. Per-bin normalization converges broadband and
                  coloured noise (rumble, traffic, pink) where the total-power normalization is
                  held back by the spread of the filtered reference's spectrum; the time-domain
                  update converges few strong tones faster (docs/cancellation.md, "Algorithm").
     With `controller.variable_step` (time-domain update only) the step of each block is the
     configured one times the consistency of the last blocks' gradients (`_variable_step`):
     full while they agree (converging, tracking), down to 1/10 once they are noise; and
     the speaker plays the weights' running average where the step is at that floor
     (`_average_weights`, `P_AVERAGE_COEF`): the adaptation's own noise averages out of
     what is played, while it converges or tracks the weights are played as they are.
  5. output y_raw(n) = w . r (w the played weights), then user gain (enabled * intensity, ramped), safety gain
     (fades, watchdog) and a peak limiter with instant attack and smooth release: the
     speaker signal never exceeds the ceiling and is never hard-clipped.

With the time-domain update, steps 4 and 5 share one pass over the weights. The reference,
filtered reference and output histories are double-length circular buffers: every sample is
written twice, so the last N samples are always one contiguous slice and the inner loops
vectorize.

The watchdog trips on NaN/Inf, on a weight norm above its limit, on error power well above
the uncontrolled level (measured while muted at start, tracked through the reference level)
and on sustained heavy limiting. A trip fades the output out fast, resets the weights, backs
off the step size and fades back in; each trip is written to the `events` ring.
"""

from __future__ import annotations

import math

import numba as nb

from device.core.dsp.hear_through import hear_through_output
from device.core.dsp.partitioned import history_length, state_size, update_weights
from device.core.dsp.layout import (
    B_ERROR_X1,
    B_ERROR_X2,
    B_ERROR_Y1,
    B_ERROR_Y2,
    B_REFERENCE_X1,
    B_REFERENCE_X2,
    B_REFERENCE_Y1,
    B_REFERENCE_Y2,
    BAND_LEAK_SAMPLES,
    BAND_LEAK_TAIL,
    BAND_STATE,
    C_FILTERED,
    C_OUTPUT,
    C_REFERENCE,
    EVENT_ERROR_RISE,
    EVENT_GAVE_UP,
    EVENT_LIMITING,
    EVENT_NONFINITE,
    EVENT_SUSTAINED_RISE,
    EVENT_WEIGHT_NORM,
    MODE_BASELINE,
    MODE_RUN,
    MODE_STOP,
    MODE_TRIP,
    P_ADAPT,
    P_AVERAGE_COEF,
    P_BACKOFF,
    P_BAND_A1,
    P_BAND_A2,
    P_BAND_B0,
    P_BAND_B1,
    P_BAND_B2,
    P_BAND_LEAK,
    P_LEAK_A1,
    P_LEAK_A2,
    P_LEAK_B0,
    P_LEAK_B1,
    P_LEAK_B2,
    P_BASELINE,
    P_BIN_FLOOR,
    P_CEILING,
    P_DELAY_TOLERANCE,
    P_FADE_RATE,
    P_FLOOR,
    P_HEAR_TARGET,
    P_HOLD,
    P_HP_B2,
    P_HP_B1,
    P_HP_B0,
    P_HP_A2,
    P_HP_A1,
    P_LEAKAGE,
    P_MAX_NORM,
    P_MIN_STEP,
    P_OUTPUT_SCALE,
    P_POWER_COEF,
    P_REGULARIZATION,
    P_RELEASE,
    P_RISE,
    P_SLOW_COEF,
    P_SLOW_HOLD,
    P_SLOW_RISE,
    P_STEP,
    P_STOP,
    P_TRIP_RATE,
    P_UPDATE_BLOCK,
    P_USER_RATE,
    P_USER_TARGET,
    P_VSS_COEF,
    P_VSS_CONSISTENCY,
    P_VSS_MIN,
    P_VSS_RISE,
    S_BAND_LEAK_COUNT,
    S_BASELINE_COUNT,
    S_BASELINE_ERROR,
    S_BASELINE_REFERENCE,
    S_CONTROL_SAMPLES,
    S_ERROR_POWER,
    S_EVENTS,
    S_HEAR_GAIN,
    S_HOLD,
    S_HP_Y2,
    S_HP_Y1,
    S_HP_X2,
    S_HP_X1,
    S_LIMIT_HOLD,
    S_LIMITED_SAMPLES,
    S_LIMITER_GAIN,
    S_MODE,
    S_NONFINITE_INPUTS,
    S_OUTPUT_GAIN,
    S_PEAK_OUT,
    S_RATIO,
    S_REFERENCE_POWER,
    S_SAFETY_GAIN,
    S_SAMPLES,
    S_SLOW_DISTURBANCE,
    S_SLOW_ERROR,
    S_SLOW_HOLD,
    S_SLOW_REFERENCE,
    S_STEP,
    S_TRIPS,
    S_UPDATE_BLOCKS,
    S_UPDATE_FILL,
    S_USER_GAIN,
    S_VSS_BLOCKS,
    S_VSS_CONSISTENCY,
    S_VSS_FACTOR,
    S_VSS_RAW,
    S_VSS_STEP,
    S_VSS_TRIPS,
    S_WEIGHT_NORM,
    S_XF_POWER,
)

# Allow reassociation so reductions vectorize, but keep NaN/Inf semantics: the guards
# below must see a NaN when one appears.
FASTMATH = {"reassoc", "contract", "nsz", "arcp"}
# Adaptation pauses below this total output gain: with almost nothing played the watchdog
# could not see a wrong model at work.
MIN_ADAPT_GAIN = 0.05
# Limiter gain under which limiting counts as heavy (6 dB of reduction).
HEAVY_LIMITING = 0.5
DENORMAL_FLOOR = 1e-30


@nb.njit(cache=True, inline="always")
def _push(buffer, half, position, value):
    """Write `value` as the newest sample of a double-length circular buffer."""
    position -= 1
    if position < 0:
        position = half - 1
    buffer[position] = value
    buffer[position + half] = value
    return position


@nb.njit(cache=True, fastmath=FASTMATH, inline="always")
def _dot(a, b, offset, start, count):
    """sum(a[start + k] * b[offset + k] for k in range(count)).

    Slicing first lets LLVM see unit-stride, non-negative indexing and emit packed loads;
    indexing with `offset + k` directly compiles to gathers (negative-index wraparound)."""
    x = a[start:start + count]
    y = b[offset:offset + count]
    acc = 0.0
    for k in range(count):
        acc += x[k] * y[k]
    return acc


@nb.njit(cache=True, fastmath=FASTMATH)
def _variable_step(weights, block_start, smoothed, params, status, running):
    """The step for this block, from the consistency of the last blocks' gradients.

    The weights' change over a block, divided by the step it adapted with, is the block's
    summed normalized gradient g. Far from the optimum successive g agree and their smoothed
    mean has the norm of g; at the optimum g is the residual's noise and its mean shrinks.
    consistency = |mean g|^2 / mean |g|^2 (bias-corrected), and the step is the configured one
    times consistency / P_VSS_CONSISTENCY, within [P_VSS_MIN, 1]. On narrowband noise the
    plain update's misadjustment grows with the band's correlation time (successive
    gradients of the residual are alike), so a step that converges tones fast leaves a
    rumble several dB short; this lowers it only where the gradient has become noise.
    The fraction grows at most P_VSS_RISE-fold a block (twofold per 40 ms): a transient's few
    consistent blocks would lift it from its floor to full in one, and with a real path far
    stronger than its estimate the full step is unstable (it diverged within 40 ms)."""
    taps = weights.shape[0]
    coef = params[P_VSS_COEF]
    used = status[S_VSS_STEP]
    factor = status[S_VSS_FACTOR]
    if status[S_VSS_TRIPS] != status[S_TRIPS] or not running:
        smoothed[:] = 0.0
        status[S_VSS_RAW] = 0.0
        status[S_VSS_BLOCKS] = 0.0
        factor = 1.0
    elif used > 0.0:
        raw = 0.0
        consistent = 0.0
        for k in range(taps):
            gradient = (block_start[k] - weights[k]) / used
            smoothed[k] += coef * (gradient - smoothed[k])
            raw += gradient * gradient
            consistent += smoothed[k] * smoothed[k]
        status[S_VSS_RAW] += coef * (raw - status[S_VSS_RAW])
        status[S_VSS_BLOCKS] += 1.0
        bias = 1.0 - (1.0 - coef) ** status[S_VSS_BLOCKS]
        if status[S_VSS_RAW] > 0.0 and bias > 0.0:
            consistency = consistent / (bias * status[S_VSS_RAW])
            status[S_VSS_CONSISTENCY] = consistency
            factor = min(1.0, max(params[P_VSS_MIN], consistency / params[P_VSS_CONSISTENCY]))
            if params[P_VSS_RISE] > 0.0:
                factor = min(factor, status[S_VSS_FACTOR] * params[P_VSS_RISE])
    if not factor > 0.0:
        factor = 1.0
    status[S_VSS_FACTOR] = factor
    status[S_VSS_TRIPS] = status[S_TRIPS]
    block_start[:] = weights
    return max(params[P_STEP] * status[S_STEP] * factor, min(params[P_MIN_STEP], params[P_STEP]))


@nb.njit(cache=True, fastmath=FASTMATH, inline="always")
def _biquad(value, b0, b1, b2, a1, a2, x1, x2, y1, y2):
    """One sample of a biquad (a0 = 1) in direct form I: returns the output and the new state
    (x1, x2, y1, y2), the last two inputs and outputs."""
    out = b0 * value + b1 * x1 + b2 * x2 - a1 * y1 - a2 * y2
    return out, value, x1, out, y1


@nb.njit(cache=True, fastmath=FASTMATH)
def _band_leak(weights, scratch, params, fraction):
    """w <- w - fraction * (w - lowpass_zero_phase(w)): the weights' response above the
    low-pass decays, below it stays. The band-limited update hardly adapts above its band, but
    hardly is not never: where a delay error turns the phase past 90 degrees the little it adapts
    grows, and with the estimate 2 samples off that took the duct from 10 dB under off to 8 dB
    over it in 40 s. The low-pass (`P_LEAK_*`, at that 90-degree point, above the update's band:
    leaking the band's own edge cost 5 dB on white noise) runs forwards then backwards along the
    taps, so its phase cancels and the weights' response is weighted by |H|^2."""
    taps = weights.shape[0]
    b0 = params[P_LEAK_B0]
    b1 = params[P_LEAK_B1]
    b2 = params[P_LEAK_B2]
    a1 = params[P_LEAK_A1]
    a2 = params[P_LEAK_A2]
    x1 = x2 = y1 = y2 = 0.0
    for k in range(taps + BAND_LEAK_TAIL):
        value = weights[k] if k < taps else 0.0
        out, x1, x2, y1, y2 = _biquad(value, b0, b1, b2, a1, a2, x1, x2, y1, y2)
        scratch[k] = out
    x1 = x2 = y1 = y2 = 0.0
    for k in range(taps + BAND_LEAK_TAIL - 1, -1, -1):
        out, x1, x2, y1, y2 = _biquad(scratch[k], b0, b1, b2, a1, a2, x1, x2, y1, y2)
        if k < taps:
            weights[k] -= fraction * (weights[k] - out)


@nb.njit(cache=True, fastmath=FASTMATH)
def _average_weights(played, weights, params, status, running):
    """played <- played + beta (weights - played), once a block: the weights the speaker plays.

    Near the optimum the adapting weights wander around it by the step's own noise (the
    misadjustment), and on narrowband noise (a rumble) that noise lies along the slow
    directions a smaller step would take seconds to converge in. The modified-FxLMS update
    does not see what is played (its error is d_hat + w . x'), so the speaker may play an
    average of the weights instead of the weights: the update keeps the step that converges,
    the average takes the noise out of the output. beta follows the variable step's fraction:
    at its floor (the gradient is noise) beta = P_AVERAGE_COEF (an average over
    `weight_average_ms`), at the full step (converging, tracking an engine's drifting orders)
    beta = 1 and the weights play as they are; an average there lags the orders it tracks
    (3-4 dB lost on drifting engine orders). Outside MODE_RUN (baseline, fades after a trip,
    a new secondary path) the played weights are the weights, and while the error is above
    its uncontrolled level they follow the weights at once."""
    taps = weights.shape[0]
    if not running:
        played[:] = weights
        return
    floor = params[P_VSS_MIN]
    fraction = 1.0
    if floor < 1.0:
        fraction = min(1.0, max(0.0, (status[S_VSS_FACTOR] - floor) / (1.0 - floor)))
    if status[S_ERROR_POWER] > status[S_RATIO] * status[S_REFERENCE_POWER] + params[P_FLOOR]:
        # The error above its uncontrolled level (the fast watchdog's measure): not near an
        # optimum. With the real path three times its estimate, d_hat carries twice the played
        # anti-noise into the update, and an average that lagged the weights there made the
        # loop overshoot: the error rose 17 dB within 160 ms and tripped the watchdog.
        fraction = 1.0
    coef = params[P_AVERAGE_COEF]
    beta = coef + (1.0 - coef) * fraction
    for k in range(taps):
        value = played[k] + beta * (weights[k] - played[k])
        if abs(value) < DENORMAL_FLOOR:
            value = 0.0
        played[k] = value


@nb.njit(cache=True)
def _record_event(events, status, code, value, step):
    capacity = events.shape[0]
    index = int(status[S_EVENTS]) % capacity
    events[index, 0] = status[S_SAMPLES]
    events[index, 1] = code
    events[index, 2] = value
    events[index, 3] = step
    status[S_EVENTS] += 1.0


@nb.njit(cache=True)
def _clear_history(weights, filtered_buffer, output_buffer, status):
    weights[:] = 0.0
    filtered_buffer[:] = 0.0
    output_buffer[:] = 0.0
    status[S_XF_POWER] = 0.0


@nb.njit(cache=True, nogil=True, fastmath=FASTMATH)
def process_block(
    reference,
    error,
    out,
    weights,
    secondary_path,
    feedback_path,
    reference_buffer,
    filtered_buffer,
    output_buffer,
    params,
    status,
    cursors,
    events,
    hear_through,
    update_state,
    twiddles,
):
    """Run the controller over one block. See the module docstring for the algorithm.

    reference, error: input blocks (any float dtype); out: the speaker block, written.
    weights (N), secondary_path (L), feedback_path (F, may be empty): filters.
    reference_buffer (2*max(N, L)), filtered_buffer (2*history_length(N, B)), output_buffer (2*max(F, L)):
    double-length histories. params/status/cursors/events: see layout.
    hear_through (K <= max(N, L), may be empty): the hear-through equalizer over the reference.
    update_state, twiddles: the partitioned update's work arrays (`device.core.dsp.partitioned`;
    empty for the time-domain update); with the time-domain update and `params[P_VSS_COEF]` > 0,
    update_state holds the variable step's two vectors (2 N: the weights at the block's start,
    the smoothed gradient) and, with `params[P_AVERAGE_COEF]` > 0, the played weights' average
    (N more), and twiddles is empty. With the time-domain update band-limited
    (`params[P_BAND_B0]` != 0), its last 2 * len(filtered_buffer) / 2 + BAND_STATE floats hold
    the low-passed filtered-reference history and the low-passes' states; an update_state too
    short for both leaves the update full band. With `params[P_UPDATE_BLOCK]` = B > 0 the filtered
    history must hold `history_length(N, B)` samples.
    """
    taps = weights.shape[0]
    path_taps = secondary_path.shape[0]
    feedback_taps = feedback_path.shape[0]
    reference_half = reference_buffer.shape[0] // 2
    filtered_half = filtered_buffer.shape[0] // 2
    output_half = output_buffer.shape[0] // 2

    position_reference = cursors[C_REFERENCE]
    position_filtered = cursors[C_FILTERED]
    position_output = cursors[C_OUTPUT]

    leak = 1.0 - params[P_LEAKAGE]
    regularization = params[P_REGULARIZATION]
    user_target = params[P_USER_TARGET]
    user_rate = params[P_USER_RATE]
    fade_rate = params[P_FADE_RATE]
    trip_rate = params[P_TRIP_RATE]
    ceiling = params[P_CEILING]
    release = params[P_RELEASE]
    rise = params[P_RISE]
    hold_limit = params[P_HOLD]
    power_coef = params[P_POWER_COEF]
    floor = params[P_FLOOR]
    slow_coef = params[P_SLOW_COEF]
    slow_rise = params[P_SLOW_RISE]
    slow_hold_limit = params[P_SLOW_HOLD]
    slow_error = status[S_SLOW_ERROR]
    slow_reference = status[S_SLOW_REFERENCE]
    slow_hold = status[S_SLOW_HOLD]
    slow_disturbance = status[S_SLOW_DISTURBANCE]
    adapt_allowed = params[P_ADAPT] > 0.5
    if params[P_STOP] > 0.5 and status[S_MODE] != MODE_STOP:
        status[S_MODE] = MODE_STOP

    mode = status[S_MODE]
    user_gain = status[S_USER_GAIN]
    safety_gain = status[S_SAFETY_GAIN]
    limiter_gain = status[S_LIMITER_GAIN]
    power = status[S_XF_POWER]
    error_power = status[S_ERROR_POWER]
    reference_power = status[S_REFERENCE_POWER]
    hold = status[S_HOLD]
    limit_hold = status[S_LIMIT_HOLD]
    step = max(params[P_STEP] * status[S_STEP], min(params[P_MIN_STEP], params[P_STEP]))
    peak = status[S_PEAK_OUT]
    hp_b0 = params[P_HP_B0]
    hp_b1 = params[P_HP_B1]
    hp_b2 = params[P_HP_B2]
    hp_a1 = params[P_HP_A1]
    hp_a2 = params[P_HP_A2]
    hp_x1 = status[S_HP_X1]
    hp_x2 = status[S_HP_X2]
    hp_y1 = status[S_HP_Y1]
    hp_y2 = status[S_HP_Y2]
    hear_taps = hear_through.shape[0]
    hear_target = params[P_HEAR_TARGET] if hear_taps > 0 else 0.0
    hear_gain = status[S_HEAR_GAIN]
    update_block = int(params[P_UPDATE_BLOCK])
    if update_block > 0 and (update_state.shape[0] < state_size(update_block) or twiddles.shape[0] != 2 * update_block
                             or filtered_half < history_length(taps, update_block)):
        update_block = 0  # arrays sized for another block: never read past them
    update_fill = int(status[S_UPDATE_FILL])
    if update_fill < 0 or update_fill >= update_block:
        update_fill = 0  # the block size changed between calls: start a new update block
    update_blocks = status[S_UPDATE_BLOCKS]
    output_target = params[P_OUTPUT_SCALE]
    output_gain = status[S_OUTPUT_GAIN]
    variable_step = update_block == 0 and params[P_VSS_COEF] > 0.0 and update_state.shape[0] >= 2 * taps
    if variable_step:
        step = _variable_step(weights, update_state[:taps], update_state[taps:2 * taps], params, status, mode == MODE_RUN)
    adapted = False

    band_size = 2 * filtered_half + BAND_STATE
    band = (update_block == 0 and params[P_BAND_B0] != 0.0
            and update_state.shape[0] >= 3 * taps + BAND_LEAK_TAIL + band_size)
    # The played average sits after the variable step's two vectors, clear of the band leak's
    # scratch, which ends where the band's history starts.
    averaging = (variable_step and params[P_AVERAGE_COEF] > 0.0
                 and update_state.shape[0] >= 4 * taps + BAND_LEAK_TAIL + (band_size if band else 0))
    played_weights = update_state[2 * taps:3 * taps]
    band_start = update_state.shape[0] - band_size if band else 0
    band_buffer = update_state[band_start:band_start + 2 * filtered_half]
    band_state = update_state[band_start + 2 * filtered_half:band_start + band_size]
    band_b0 = params[P_BAND_B0]
    band_b1 = params[P_BAND_B1]
    band_b2 = params[P_BAND_B2]
    band_a1 = params[P_BAND_A1]
    band_a2 = params[P_BAND_A2]
    bx1 = bx2 = by1 = by2 = ex1 = ex2 = ey1 = ey2 = 0.0
    band_power = 0.0
    if band and params[P_BAND_LEAK] > 0.0 and status[S_BAND_LEAK_COUNT] >= BAND_LEAK_SAMPLES:
        # At the block's start, after the variable step took its snapshot of the weights, which
        # then takes the leaked ones: the leak is not the gradient, and counted as one its steady
        # direction read as consistency and raised the step (0.1-0.2 dB lost on rumble).
        fraction = 1.0 - math.exp(-params[P_BAND_LEAK] * status[S_BAND_LEAK_COUNT])
        _band_leak(weights, update_state[band_start - taps - BAND_LEAK_TAIL:band_start], params, fraction)
        status[S_BAND_LEAK_COUNT] = 0.0
        if variable_step:
            update_state[:taps] = weights
    if averaging:
        _average_weights(played_weights, weights, params, status, mode == MODE_RUN)
    output_weights = played_weights if averaging else weights
    if band:
        bx1 = band_state[B_REFERENCE_X1]
        bx2 = band_state[B_REFERENCE_X2]
        by1 = band_state[B_REFERENCE_Y1]
        by2 = band_state[B_REFERENCE_Y2]
        ex1 = band_state[B_ERROR_X1]
        ex2 = band_state[B_ERROR_X2]
        ey1 = band_state[B_ERROR_Y1]
        ey2 = band_state[B_ERROR_Y2]
        band_power = _dot(band_buffer, band_buffer, position_filtered, position_filtered, taps)

    # Recompute the filtered-reference power once a block so the running sum cannot drift.
    power = _dot(filtered_buffer, filtered_buffer, position_filtered, position_filtered, taps)

    # w . x'(n) of the modified error, carried over from the previous sample's update pass.
    next_dot = 0.0
    have_next_dot = False
    for n in range(reference.shape[0]):
        r = float(reference[n])
        e = float(error[n])
        if not (math.isfinite(r) and math.isfinite(e)):
            status[S_NONFINITE_INPUTS] += 1.0
            if not math.isfinite(r):
                r = 0.0
            if not math.isfinite(e):
                e = 0.0

        # High-pass the reference: content the speaker cannot reproduce (DC, rumble below
        # its resonance) would only drive the weights where the secondary path is ~0.
        r, hp_x1, hp_x2, hp_y1, hp_y2 = _biquad(r, hp_b0, hp_b1, hp_b2, hp_a1, hp_a2, hp_x1, hp_x2, hp_y1, hp_y2)
        if feedback_taps > 1:
            # feedback_path[j] maps the output played j samples ago; j = 0 is not played yet.
            r -= _dot(feedback_path, output_buffer, position_output, 1, feedback_taps - 1)

        position_reference = _push(reference_buffer, reference_half, position_reference, r)
        filtered = _dot(secondary_path, reference_buffer, position_reference, 0, path_taps)
        position_filtered = _push(filtered_buffer, filtered_half, position_filtered, filtered)
        oldest = filtered_buffer[position_filtered + taps]
        power += filtered * filtered - oldest * oldest
        if power < 0.0:
            power = 0.0
        if band:
            banded, bx1, bx2, by1, by2 = _biquad(filtered, band_b0, band_b1, band_b2, band_a1, band_a2, bx1, bx2, by1, by2)
            band_buffer[position_filtered] = banded
            band_buffer[position_filtered + filtered_half] = banded
            oldest = band_buffer[position_filtered + taps]
            band_power += banded * banded - oldest * oldest
            if band_power < 0.0:
                band_power = 0.0

        total_gain = user_gain * safety_gain
        y_raw = 0.0
        # d_hat = e - s_hat * y_played: the error as it would be with control off, by the
        # device's own model. The update adapts on it and the sustained-rise watchdog judges
        # the error against it. secondary_path[j] maps the output played j samples ago; j = 0
        # is not played yet.
        disturbance = e - _dot(secondary_path, output_buffer, position_output, 1, path_taps - 1)
        # Hear-through freezes the weights: switching back to ANC is instant.
        hearing = hear_gain > 0.0 or hear_target > 0.0
        if update_block > 0 and mode == MODE_RUN and adapt_allowed and total_gain >= MIN_ADAPT_GAIN and not hearing:
            # Partitioned update: the weights stay fixed over an update block, so the block's
            # modified errors are those of one filter, and change at its last sample.
            update_state[update_fill] = disturbance + _dot(weights, filtered_buffer, position_filtered, 0, taps)
            update_fill += 1
            if update_fill == update_block:
                update_blocks = update_weights(weights, filtered_buffer, position_filtered, update_state, twiddles,
                                               update_block, step, leak, regularization, power_coef,
                                               params[P_BIN_FLOOR], params[P_DELAY_TOLERANCE], update_blocks)
                update_fill = 0
            y_raw = _dot(weights, reference_buffer, position_reference, 0, taps)
            have_next_dot = False
        elif mode == MODE_RUN and adapt_allowed and total_gain >= MIN_ADAPT_GAIN and not hearing:
            if have_next_dot:
                current_dot = next_dot + weights[0] * filtered
            else:
                current_dot = _dot(weights, filtered_buffer, position_filtered, 0, taps)
            modified_error = disturbance + current_dot
            adapted = True
            if band:
                banded_error, ex1, ex2, ey1, ey2 = _biquad(modified_error, band_b0, band_b1, band_b2, band_a1, band_a2,
                                                          ex1, ex2, ey1, ey2)
                g = step * banded_error / (regularization + band_power)
                update_window = band_buffer[position_filtered:position_filtered + taps]
            else:
                g = step * modified_error / (regularization + power)
                update_window = filtered_buffer[position_filtered:position_filtered + taps]
            reference_window = reference_buffer[position_reference:position_reference + taps]
            # shifted[k] = x'(n - k + 1) for k >= 1: next sample's filtered-reference window,
            # all but its newest sample, which is not known yet. Its dot with the updated
            # weights comes free in the same pass (at the wrap, the mirror half supplies it).
            base = position_filtered - 1 if position_filtered > 0 else filtered_half - 1
            shifted = filtered_buffer[base:base + taps]
            next_dot = 0.0
            for k in range(taps):
                updated = leak * weights[k] - g * update_window[k]
                weights[k] = updated
                y_raw += output_weights[k] * reference_window[k]
                next_dot += updated * shifted[k]
            next_dot -= weights[0] * shifted[0]
            have_next_dot = True
        else:
            y_raw = _dot(output_weights, reference_buffer, position_reference, 0, taps)
            have_next_dot = False
            # A paused update drops its partial block: its errors and the history must line up.
            update_fill = 0
            # and the band-limited error starts afresh, as its input did not exist meanwhile.
            ex1 = ex2 = ey1 = ey2 = 0.0

        y_hear = hear_through_output(hear_through, reference_buffer, position_reference) if hearing else 0.0

        # Gains: the user's (enabled * intensity), the hear-through's and the safety fades, all
        # ramped; a mode switch is a crossfade of the first two over the same ramp.
        if user_gain < user_target:
            user_gain = min(user_target, user_gain + user_rate)
        elif user_gain > user_target:
            user_gain = max(user_target, user_gain - user_rate)
        if output_gain < output_target:
            output_gain = min(output_target, output_gain + user_rate)
        elif output_gain > output_target:
            output_gain = max(output_target, output_gain - user_rate)
        if hear_gain < hear_target:
            hear_gain = min(hear_target, hear_gain + user_rate)
        elif hear_gain > hear_target:
            hear_gain = max(hear_target, hear_gain - user_rate)
        if mode == MODE_RUN:
            safety_gain = min(1.0, safety_gain + fade_rate)
        elif mode == MODE_TRIP:
            safety_gain = max(0.0, safety_gain - trip_rate)
        else:
            safety_gain = max(0.0, safety_gain - fade_rate)

        # The no-harm output gain scales what is played, not the adaptation (the gate above
        # reads user and safety gains only): the filter keeps learning while it is held low.
        y = (y_raw * user_gain * output_gain + y_hear * hear_gain) * safety_gain
        magnitude = abs(y)
        limiter_gain += (1.0 - limiter_gain) * release
        if magnitude * limiter_gain > ceiling:
            limiter_gain = ceiling / magnitude
        played = y * limiter_gain
        if not math.isfinite(played):
            played = 0.0
        if limiter_gain < 1.0 - 1e-9:
            status[S_LIMITED_SAMPLES] += 1.0
        out[n] = played
        if abs(played) > peak:
            peak = abs(played)
        if safety_gain > 0.0:
            status[S_CONTROL_SAMPLES] += 1.0

        position_output = _push(output_buffer, output_half, position_output, played)

        # The uncontrolled level is judged through the reference after feedback
        # neutralization: what the reference mic hears of the speaker is not ambient noise.
        error_power += power_coef * (e * e - error_power)
        reference_power += power_coef * (r * r - reference_power)
        slow_error += slow_coef * (e * e - slow_error)
        slow_reference += slow_coef * (r * r - slow_reference)
        slow_disturbance += slow_coef * (disturbance * disturbance - slow_disturbance)
        status[S_SAMPLES] += 1.0

        if mode == MODE_BASELINE:
            status[S_BASELINE_ERROR] += e * e
            status[S_BASELINE_REFERENCE] += r * r
            status[S_BASELINE_COUNT] += 1.0
            if status[S_BASELINE_COUNT] >= params[P_BASELINE]:
                if status[S_BASELINE_REFERENCE] > 0.0:
                    status[S_RATIO] = status[S_BASELINE_ERROR] / status[S_BASELINE_REFERENCE]
                else:
                    status[S_RATIO] = 0.0
                mode = MODE_RUN
        elif mode == MODE_RUN and hearing:
            # Playing the room in raises the error level by design and a loud alarm is
            # limited by design: neither is divergence, and the frozen weights cannot diverge.
            # The error trackers restart from the uncontrolled level, so the room just played
            # cannot look like a rise once anti-noise is back.
            hold = 0.0
            limit_hold = 0.0
            slow_hold = 0.0
            error_power = status[S_RATIO] * reference_power
            slow_error = slow_disturbance
        elif mode == MODE_RUN:
            uncontrolled = status[S_RATIO] * reference_power + floor
            if error_power > rise * uncontrolled:
                hold += 1.0
            else:
                hold = 0.0
            if limiter_gain < HEAVY_LIMITING:
                limit_hold += 1.0
            else:
                limit_hold = 0.0
            # A smaller rise that lasts: the controller is making it louder, if only by a
            # decibel or two (a secondary-path estimate off in gain or delay does that). It is
            # judged against d_hat, not the start-up ratio times the reference level: the ratio
            # of error to reference power follows the noise's spectrum (the primary path is
            # not flat), so on speech babble or a drifting engine the ratio measured in the
            # first 100 ms was 1-4 dB off seconds later and tripped the watchdog on noise the
            # controller was not making louder. d_hat = d + (s - s_hat) y carries the model
            # error: with a gain error under 50% it stays below e when the output runs away, so
            # a runaway still trips here; a large phase error can hide one from this tier, and
            # the fast tier above stays on the model-free ratio for that.
            slow_uncontrolled = slow_disturbance + floor
            if slow_error > slow_rise * slow_uncontrolled and safety_gain >= 1.0:
                slow_hold += 1.0
            else:
                slow_hold = 0.0
            if hold > hold_limit:
                mode = MODE_TRIP
                _record_event(events, status, EVENT_ERROR_RISE, 10.0 * math.log10(error_power / uncontrolled), step)
                hold = 0.0
            elif limit_hold > hold_limit:
                mode = MODE_TRIP
                _record_event(events, status, EVENT_LIMITING, 20.0 * math.log10(max(limiter_gain, 1e-12)), step)
                limit_hold = 0.0
            elif slow_hold > slow_hold_limit:
                mode = MODE_TRIP
                _record_event(events, status, EVENT_SUSTAINED_RISE, 10.0 * math.log10(slow_error / slow_uncontrolled), step)
                slow_hold = 0.0
        elif mode == MODE_TRIP and safety_gain <= 0.0:
            # Silent now: reset and come back slower; if the step is already at its floor,
            # the plant has changed under the model and only a new identification helps.
            # The histories stay: they are what the microphones heard and the speaker played,
            # whatever the weights were, and a cleared filtered reference would normalize the
            # first steps after the reset by a fraction of the reference's power (one block
            # after a reset moved the weights' norm from 0.02 to 0.36 on engine hum).
            weights[:] = 0.0
            if averaging:
                played_weights[:] = 0.0
            have_next_dot = False
            ex1 = ex2 = ey1 = ey2 = 0.0
            status[S_TRIPS] += 1.0
            error_power = status[S_RATIO] * reference_power
            slow_error = slow_disturbance
            slow_hold = 0.0
            if params[P_STEP] * status[S_STEP] <= params[P_MIN_STEP]:
                _record_event(events, status, EVENT_GAVE_UP, status[S_TRIPS], step)
                mode = MODE_STOP
            else:
                status[S_STEP] = status[S_STEP] * params[P_BACKOFF]
                step = max(params[P_STEP] * status[S_STEP], min(params[P_MIN_STEP], params[P_STEP]))
                mode = MODE_RUN

    if variable_step:
        status[S_VSS_STEP] = step if adapted else 0.0
    if band and adapted and params[P_BAND_LEAK] > 0.0:
        status[S_BAND_LEAK_COUNT] += reference.shape[0]
    # Block-level checks: weights blowing up or turned non-finite.
    norm_squared = 0.0
    for k in range(taps):
        value = weights[k]
        if abs(value) < DENORMAL_FLOOR:
            weights[k] = 0.0
            value = 0.0
        norm_squared += value * value
    norm = math.sqrt(norm_squared)
    if not math.isfinite(norm):
        _clear_history(weights, filtered_buffer, output_buffer, status)
        if averaging:
            played_weights[:] = 0.0
        power = 0.0
        if band:
            band_buffer[:] = 0.0
            bx1 = bx2 = by1 = by2 = ex1 = ex2 = ey1 = ey2 = 0.0
        safety_gain = 0.0
        status[S_STEP] = status[S_STEP] * params[P_BACKOFF]
        status[S_TRIPS] += 1.0
        _record_event(events, status, EVENT_NONFINITE, 0.0, step)
        update_fill = 0
        if mode != MODE_STOP and mode != MODE_BASELINE:
            mode = MODE_RUN
        norm = 0.0
    elif norm > params[P_MAX_NORM] and mode == MODE_RUN:
        mode = MODE_TRIP
        _record_event(events, status, EVENT_WEIGHT_NORM, norm, step)

    if error_power < DENORMAL_FLOOR:
        error_power = 0.0
    if reference_power < DENORMAL_FLOOR:
        reference_power = 0.0
    if slow_error < DENORMAL_FLOOR:
        slow_error = 0.0
    if slow_reference < DENORMAL_FLOOR:
        slow_reference = 0.0
    if slow_disturbance < DENORMAL_FLOOR:
        slow_disturbance = 0.0

    cursors[C_REFERENCE] = position_reference
    cursors[C_FILTERED] = position_filtered
    cursors[C_OUTPUT] = position_output
    status[S_SLOW_ERROR] = slow_error
    status[S_SLOW_REFERENCE] = slow_reference
    status[S_SLOW_HOLD] = slow_hold
    status[S_SLOW_DISTURBANCE] = slow_disturbance
    status[S_MODE] = mode
    status[S_USER_GAIN] = user_gain
    status[S_SAFETY_GAIN] = safety_gain
    status[S_LIMITER_GAIN] = limiter_gain
    status[S_XF_POWER] = power
    status[S_ERROR_POWER] = error_power
    status[S_REFERENCE_POWER] = reference_power
    status[S_HOLD] = hold
    status[S_LIMIT_HOLD] = limit_hold
    status[S_WEIGHT_NORM] = norm
    status[S_PEAK_OUT] = peak
    status[S_HEAR_GAIN] = hear_gain
    status[S_UPDATE_FILL] = update_fill
    status[S_UPDATE_BLOCKS] = update_blocks
    status[S_OUTPUT_GAIN] = output_gain
    if abs(hp_y1) < DENORMAL_FLOOR:
        hp_y1 = 0.0
    if abs(hp_y2) < DENORMAL_FLOOR:
        hp_y2 = 0.0
    if band:
        if abs(by1) < DENORMAL_FLOOR:
            by1 = 0.0
        if abs(by2) < DENORMAL_FLOOR:
            by2 = 0.0
        if abs(ey1) < DENORMAL_FLOOR:
            ey1 = 0.0
        if abs(ey2) < DENORMAL_FLOOR:
            ey2 = 0.0
        band_state[B_REFERENCE_X1] = bx1
        band_state[B_REFERENCE_X2] = bx2
        band_state[B_REFERENCE_Y1] = by1
        band_state[B_REFERENCE_Y2] = by2
        band_state[B_ERROR_X1] = ex1
        band_state[B_ERROR_X2] = ex2
        band_state[B_ERROR_Y1] = ey1
        band_state[B_ERROR_Y2] = ey2
    status[S_HP_X1] = hp_x1
    status[S_HP_X2] = hp_x2
    status[S_HP_Y1] = hp_y1
    status[S_HP_Y2] = hp_y2
