"""Plain NumPy reference of the FxLMS kernel, written for reading, not speed.

Same algorithm, same settings (`device.core.dsp.layout` params) and the same safety logic as
`device.core.dsp.fxlms.process_block`, but with textbook shift-register histories and one
`numpy.dot` per filter; the partitioned update (`params[P_UPDATE_BLOCK]` > 0) computes each
partition's gradient with `numpy.fft` one partition at a time. The tests check the numba kernel against it to tight tolerance;
the benchmark reports its speed beside the kernel's.
"""

from __future__ import annotations

import math

import numpy as np

from device.core.dsp import layout as L

MIN_ADAPT_GAIN = 0.05
HEAVY_LIMITING = 0.5


class ReferenceFxlms:
    def __init__(self, taps: int, secondary_path: np.ndarray, feedback_path: np.ndarray | None, params: np.ndarray):
        self.params = params  # shared with the caller, read at each block like the kernel does
        self.secondary_path = np.asarray(secondary_path, dtype=np.float64)
        self.feedback_path = None if feedback_path is None or len(feedback_path) < 2 else np.asarray(feedback_path, dtype=np.float64)
        self.weights = np.zeros(taps)
        self.x = np.zeros(max(taps, self.secondary_path.size))   # x[k] = reference(n - k)
        block = int(params[L.P_UPDATE_BLOCK])
        partitions = -(-taps // block) if block > 0 else 0
        self.xf = np.zeros(max(taps + 1, (partitions + 1) * block))  # filtered reference history
        self.update_errors: list[float] = []                          # modified errors of the update block
        self.bin_power = np.zeros(2 * block)
        self.update_blocks = 0
        self.played = np.zeros(max(0 if self.feedback_path is None else self.feedback_path.size, self.secondary_path.size))
        self.hp_in = [0.0, 0.0]
        self.hp_out = [0.0, 0.0]
        self.mode = L.MODE_BASELINE
        self.user_gain = params[L.P_USER_TARGET]
        self.safety_gain = 0.0
        self.output_gain = params[L.P_OUTPUT_SCALE]
        self.limiter_gain = 1.0
        self.error_power = 0.0
        self.reference_power = 0.0
        self.slow_error = 0.0
        self.slow_reference = 0.0
        self.slow_disturbance = 0.0
        self.slow_hold = 0
        self.baseline = [0.0, 0.0, 0]
        self.ratio = 0.0
        self.hold = 0
        self.limit_hold = 0
        self.step_scale = 1.0
        self.trips = 0
        self.events: list[tuple[int, int]] = []
        self.samples = 0
        # The variable step (time-domain update with params[P_VSS_COEF] > 0): the weights at the
        # block's start, the smoothed gradient and its smoothed squared norm.
        self.block_start = np.zeros(taps)
        self.smoothed_gradient = np.zeros(taps)
        self.gradient_power = 0.0
        self.gradient_blocks = 0
        self.step_factor = 1.0
        self.step_trips = 0
        self.block_step = 0.0   # the step the last block adapted with, 0 if it did not adapt
        # The weights the speaker plays (params[P_AVERAGE_COEF] > 0 with the variable step).
        self.played_weights = np.zeros(taps)
        # The band-limited time-domain update (params[P_BAND_B0] != 0): the low-passed filtered
        # reference's history and the two low-passes' last inputs and outputs.
        self.xb = np.zeros(taps + 1)
        self.band_reference = [0.0, 0.0, 0.0, 0.0]   # x1, x2, y1, y2
        self.band_error = [0.0, 0.0, 0.0, 0.0]
        self.band_leak_count = 0

    def _band_leak(self, fraction: float) -> None:
        """`device.core.dsp.fxlms._band_leak`: the weights minus their zero-phase low-pass
        (the leak's biquad forwards, then backwards) decay by `fraction`."""
        extended = np.r_[self.weights, np.zeros(L.BAND_LEAK_TAIL)]
        forward = np.zeros_like(extended)
        state = [0.0, 0.0, 0.0, 0.0]
        for k in range(extended.size):
            forward[k] = self._band(state, extended[k], L.P_LEAK_B0)
        state = [0.0, 0.0, 0.0, 0.0]
        for k in range(extended.size - 1, -1, -1):
            out = self._band(state, forward[k], L.P_LEAK_B0)
            if k < self.weights.size:
                self.weights[k] -= fraction * (self.weights[k] - out)

    def _band(self, state: list[float], value: float, first: int = L.P_BAND_B0) -> float:
        """One sample of the biquad whose (b0, b1, b2, a1, a2) start at params[first]."""
        b0, b1, b2, a1, a2 = self.params[first:first + 5]
        x1, x2, y1, y2 = state
        out = b0 * value + b1 * x1 + b2 * x2 - a1 * y1 - a2 * y2
        state[:] = [value, x1, out, y1]
        return out

    @staticmethod
    def _shift_in(history: np.ndarray, value: float) -> None:
        history[1:] = history[:-1]
        history[0] = value

    def _step(self) -> float:
        p = self.params
        return max(p[L.P_STEP] * self.step_scale, min(p[L.P_MIN_STEP], p[L.P_STEP]))

    def _variable_step(self, running: bool) -> float:
        """`device.core.dsp.fxlms._variable_step`: the block's step from the consistency of the
        last blocks' normalized gradients (the weights' change over a block over its step)."""
        p = self.params
        coef = p[L.P_VSS_COEF]
        factor = self.step_factor
        if self.step_trips != self.trips or not running:
            self.smoothed_gradient[:] = 0.0
            self.gradient_power = 0.0
            self.gradient_blocks = 0
            factor = 1.0
        elif self.block_step > 0.0:
            gradient = (self.block_start - self.weights) / self.block_step
            self.smoothed_gradient += coef * (gradient - self.smoothed_gradient)
            self.gradient_power += coef * (float(np.dot(gradient, gradient)) - self.gradient_power)
            self.gradient_blocks += 1
            bias = 1.0 - (1.0 - coef) ** self.gradient_blocks
            if self.gradient_power > 0.0 and bias > 0.0:
                consistency = float(np.dot(self.smoothed_gradient, self.smoothed_gradient)) / (bias * self.gradient_power)
                factor = min(1.0, max(p[L.P_VSS_MIN], consistency / p[L.P_VSS_CONSISTENCY]))
                if p[L.P_VSS_RISE] > 0.0:
                    factor = min(factor, self.step_factor * p[L.P_VSS_RISE])
        if not factor > 0.0:
            factor = 1.0
        self.step_factor = factor
        self.step_trips = self.trips
        self.block_start[:] = self.weights
        return max(p[L.P_STEP] * self.step_scale * factor, min(p[L.P_MIN_STEP], p[L.P_STEP]))

    def _average_weights(self, running: bool) -> None:
        """`device.core.dsp.fxlms._average_weights`: the played weights follow the weights by
        beta a block, from P_AVERAGE_COEF at the variable step's floor to 1 at the full step."""
        p = self.params
        if not running:
            self.played_weights[:] = self.weights
            return
        floor = p[L.P_VSS_MIN]
        fraction = min(1.0, max(0.0, (self.step_factor - floor) / (1.0 - floor))) if floor < 1.0 else 1.0
        if self.error_power > self.ratio * self.reference_power + p[L.P_FLOOR]:
            fraction = 1.0   # louder than the uncontrolled level: play the weights as they are
        beta = p[L.P_AVERAGE_COEF] + (1.0 - p[L.P_AVERAGE_COEF]) * fraction
        self.played_weights += beta * (self.weights - self.played_weights)
        self.played_weights[np.abs(self.played_weights) < 1e-30] = 0.0

    def _reset_filter(self) -> None:
        """A watchdog reset: the weights only; the histories are what was heard and played."""
        self.weights[:] = 0.0
        self.played_weights[:] = 0.0
        self.update_errors = []
        self.band_error = [0.0, 0.0, 0.0, 0.0]

    def _partitioned_update(self, step: float) -> None:
        """The block update of `device.core.dsp.partitioned`, written out per partition."""
        p = self.params
        taps, block = self.weights.size, int(p[L.P_UPDATE_BLOCK])
        size = 2 * block
        error_spectrum = np.fft.fft(np.concatenate([np.zeros(block), self.update_errors]))
        block_coef = 1.0 - (1.0 - p[L.P_POWER_COEF]) ** block
        correction = 1.0 / (1.0 - (1.0 - block_coef) ** (self.update_blocks + 1))
        self.update_blocks += 1
        gradient = np.zeros(taps)
        for partition in range(-(-taps // block)):
            lag = partition * block
            # Oldest first: x'(n - lag - size + 1) ... x'(n - lag).
            window = self.xf[lag:lag + size][::-1]
            spectrum = np.fft.fft(window)
            if partition == 0:
                self.bin_power += block_coef * (np.abs(spectrum) ** 2 - self.bin_power)
                self.bin_power[self.bin_power < 1e-30] = 0.0
                power = correction * self.bin_power
                power = power + p[L.P_BIN_FLOOR] * power.mean() + p[L.P_REGULARIZATION] * size / taps
                # Bins a delay error of P_DELAY_TOLERANCE samples could turn by over 60 degrees
                # are not updated.
                frequency = np.minimum(np.arange(size), size - np.arange(size))
                tolerance = p[L.P_DELAY_TOLERANCE]
                trusted = size / (6.0 * tolerance) if tolerance > 0 else size
                inverse_power = np.where(frequency > trusted, 0.0, 1.0 / power)
            correlation = np.fft.ifft(np.conj(spectrum) * error_spectrum * inverse_power).real * size
            count = min(block, taps - lag)
            gradient[lag:lag + count] = correlation[:count]
        leak = (1.0 - p[L.P_LEAKAGE]) ** block
        self.weights = leak * self.weights - step / taps * gradient

    def process(self, reference: np.ndarray, error: np.ndarray) -> np.ndarray:
        p = self.params
        taps = self.weights.size
        out = np.zeros(len(reference))
        if p[L.P_STOP] > 0.5:
            self.mode = L.MODE_STOP
        step = self._step()
        variable_step = p[L.P_UPDATE_BLOCK] == 0 and p[L.P_VSS_COEF] > 0.0
        if variable_step:
            step = self._variable_step(self.mode == L.MODE_RUN)
        adapted = False
        band = p[L.P_UPDATE_BLOCK] == 0 and p[L.P_BAND_B0] != 0.0
        if band and p[L.P_BAND_LEAK] > 0.0 and self.band_leak_count >= L.BAND_LEAK_SAMPLES:
            # After the variable step's snapshot, which takes the leaked weights (the kernel's order).
            self._band_leak(1.0 - math.exp(-p[L.P_BAND_LEAK] * self.band_leak_count))
            self.band_leak_count = 0
            self.block_start[:] = self.weights
        averaging = variable_step and p[L.P_AVERAGE_COEF] > 0.0
        if averaging:
            self._average_weights(self.mode == L.MODE_RUN)
        b0, b1, b2, a1, a2 = p[L.P_HP_B0], p[L.P_HP_B1], p[L.P_HP_B2], p[L.P_HP_A1], p[L.P_HP_A2]
        for n in range(len(reference)):
            r, e = float(reference[n]), float(error[n])
            r = r if math.isfinite(r) else 0.0
            e = e if math.isfinite(e) else 0.0
            hp = b0 * r + b1 * self.hp_in[0] + b2 * self.hp_in[1] - a1 * self.hp_out[0] - a2 * self.hp_out[1]
            self.hp_in = [r, self.hp_in[0]]
            self.hp_out = [hp, self.hp_out[0]]
            r = hp
            if self.feedback_path is not None:
                r -= np.dot(self.feedback_path[1:], self.played[:self.feedback_path.size - 1])
            self._shift_in(self.x, r)
            filtered = np.dot(self.secondary_path, self.x[:self.secondary_path.size])
            self._shift_in(self.xf, filtered)
            power = np.dot(self.xf[:taps], self.xf[:taps])
            if band:
                self._shift_in(self.xb, self._band(self.band_reference, filtered))
            disturbance = e - np.dot(self.secondary_path[1:], self.played[:self.secondary_path.size - 1])
            adapting = self.mode == L.MODE_RUN and p[L.P_ADAPT] > 0.5 and self.user_gain * self.safety_gain >= MIN_ADAPT_GAIN
            if adapting and p[L.P_UPDATE_BLOCK] > 0:
                self.update_errors.append(disturbance + np.dot(self.weights, self.xf[:taps]))
                if len(self.update_errors) == int(p[L.P_UPDATE_BLOCK]):
                    self._partitioned_update(step)
                    self.update_errors = []
            elif adapting:
                modified_error = disturbance + np.dot(self.weights, self.xf[:taps])
                if band:
                    banded_error = self._band(self.band_error, modified_error)
                    g = step * banded_error / (p[L.P_REGULARIZATION] + np.dot(self.xb[:taps], self.xb[:taps]))
                    self.weights = (1.0 - p[L.P_LEAKAGE]) * self.weights - g * self.xb[:taps]
                else:
                    g = step * modified_error / (p[L.P_REGULARIZATION] + power)
                    self.weights = (1.0 - p[L.P_LEAKAGE]) * self.weights - g * self.xf[:taps]
                adapted = True
            else:
                self.update_errors = []
                self.band_error = [0.0, 0.0, 0.0, 0.0]
            y_raw = np.dot(self.played_weights if averaging else self.weights, self.x[:taps])

            target = p[L.P_USER_TARGET]
            if self.user_gain < target:
                self.user_gain = min(target, self.user_gain + p[L.P_USER_RATE])
            elif self.user_gain > target:
                self.user_gain = max(target, self.user_gain - p[L.P_USER_RATE])
            if self.mode == L.MODE_RUN:
                self.safety_gain = min(1.0, self.safety_gain + p[L.P_FADE_RATE])
            elif self.mode == L.MODE_TRIP:
                self.safety_gain = max(0.0, self.safety_gain - p[L.P_TRIP_RATE])
            else:
                self.safety_gain = max(0.0, self.safety_gain - p[L.P_FADE_RATE])

            if self.output_gain < p[L.P_OUTPUT_SCALE]:
                self.output_gain = min(p[L.P_OUTPUT_SCALE], self.output_gain + p[L.P_USER_RATE])
            elif self.output_gain > p[L.P_OUTPUT_SCALE]:
                self.output_gain = max(p[L.P_OUTPUT_SCALE], self.output_gain - p[L.P_USER_RATE])
            y = y_raw * self.user_gain * self.output_gain * self.safety_gain
            self.limiter_gain += (1.0 - self.limiter_gain) * p[L.P_RELEASE]
            if abs(y) * self.limiter_gain > p[L.P_CEILING]:
                self.limiter_gain = p[L.P_CEILING] / abs(y)
            played = y * self.limiter_gain
            out[n] = played
            self._shift_in(self.played, played)

            self.error_power += p[L.P_POWER_COEF] * (e * e - self.error_power)
            self.reference_power += p[L.P_POWER_COEF] * (r * r - self.reference_power)
            self.slow_error += p[L.P_SLOW_COEF] * (e * e - self.slow_error)
            self.slow_reference += p[L.P_SLOW_COEF] * (r * r - self.slow_reference)
            self.slow_disturbance += p[L.P_SLOW_COEF] * (disturbance * disturbance - self.slow_disturbance)
            self.samples += 1
            if self.mode == L.MODE_BASELINE:
                self.baseline[0] += e * e
                self.baseline[1] += r * r
                self.baseline[2] += 1
                if self.baseline[2] >= p[L.P_BASELINE]:
                    self.ratio = self.baseline[0] / self.baseline[1] if self.baseline[1] > 0 else 0.0
                    self.mode = L.MODE_RUN
            elif self.mode == L.MODE_RUN:
                uncontrolled = self.ratio * self.reference_power + p[L.P_FLOOR]
                self.hold = self.hold + 1 if self.error_power > p[L.P_RISE] * uncontrolled else 0
                self.limit_hold = self.limit_hold + 1 if self.limiter_gain < HEAVY_LIMITING else 0
                slow_uncontrolled = self.slow_disturbance + p[L.P_FLOOR]
                sustained = self.slow_error > p[L.P_SLOW_RISE] * slow_uncontrolled and self.safety_gain >= 1.0
                self.slow_hold = self.slow_hold + 1 if sustained else 0
                if self.hold > p[L.P_HOLD]:
                    self.mode, self.hold = L.MODE_TRIP, 0
                    self.events.append((self.samples - 1, L.EVENT_ERROR_RISE))
                elif self.limit_hold > p[L.P_HOLD]:
                    self.mode, self.limit_hold = L.MODE_TRIP, 0
                    self.events.append((self.samples - 1, L.EVENT_LIMITING))
                elif self.slow_hold > p[L.P_SLOW_HOLD]:
                    self.mode, self.slow_hold = L.MODE_TRIP, 0
                    self.events.append((self.samples - 1, L.EVENT_SUSTAINED_RISE))
            elif self.mode == L.MODE_TRIP and self.safety_gain <= 0.0:
                self._reset_filter()
                self.trips += 1
                self.error_power = self.ratio * self.reference_power
                self.slow_error = self.slow_disturbance
                self.slow_hold = 0
                if p[L.P_STEP] * self.step_scale <= p[L.P_MIN_STEP]:
                    self.events.append((self.samples - 1, L.EVENT_GAVE_UP))
                    self.mode = L.MODE_STOP
                else:
                    self.step_scale *= p[L.P_BACKOFF]
                    step = self._step()
                    self.mode = L.MODE_RUN

        if variable_step:
            self.block_step = step if adapted else 0.0
        if band and adapted and p[L.P_BAND_LEAK] > 0.0:
            self.band_leak_count += len(reference)
        self.weights[np.abs(self.weights) < 1e-30] = 0.0
        norm = float(np.linalg.norm(self.weights))
        if norm > p[L.P_MAX_NORM] and self.mode == L.MODE_RUN:
            self.mode = L.MODE_TRIP
            self.events.append((self.samples, L.EVENT_WEIGHT_NORM))
        return out
