"""Delayless partitioned-block frequency-domain update of the FxLMS weights.

The time-domain update (`fxlms.process_block` with `P_UPDATE_BLOCK` = 0) normalizes by the
total filtered-reference power, so every mode of the filter converges at the pace of the
weakest: on coloured or low-frequency noise (rumble, construction, pink, a duct's long
paths) the spread of the filtered reference's spectrum is 30-60 dB and the quiet bands
barely move. This update normalizes each frequency bin by its own smoothed power instead.

The anti-noise stays a time-domain FIR w . r computed every sample with the current weights
(no added latency); only the gradient is computed by blocks. Every B samples, with the
modified errors e'(n) of the block collected by the kernel:

  E     = FFT([0 ... 0 (B), e'(block)])                     (size M = 2B)
  X_p   = FFT(x'(n - pB - M + 1 ... n - pB))                 partition p = 0 .. P-1, P = ceil(N/B)
  S_k  <- S_k + c (|X_0,k|^2 - S_k)                          per-bin power, bias-corrected
  G_p   = conj(X_p) E / (S_k + floor * mean(S) + delta)    in the trusted band, |f_k| <= M / (6 tolerance)
          0                                              above it
  w[pB + j] <- (1 - leakage)^B w[pB + j] - (mu / N) IFFT(G_p)[j],   j < B (gradient constraint)

For white noise S_k ~ M sigma^2 and the step means what it means for the time-domain update
(mu / N per sample times the correlation over sigma^2). The floor keeps bins where the
filtered reference is near zero (below the high-pass, at a secondary-path notch) from
getting huge steps; delta is the time-domain regularization scaled to one bin.

The trusted band is where the update can afford per-bin normalization when the estimate is
wrong. A bin converges while the estimate's phase there is within 90 degrees of the real
path's and diverges beyond, at a pace the per-bin normalization makes the same in every bin:
an estimate 2 samples early or late is more than 90 degrees off above fs / 8, where per-bin
normalization gives the weakly excited bins full-speed steps in the wrong direction (seconds
3.4 and 8.1 dB louder than off on white noise through the headphone). A delay error of up to
`tolerance` samples turns bin f's phase by 2 pi f tolerance / M, at most 60 degrees in the
trusted band (30 left for the estimate's own error); the bins above are not updated. Giving
them the total-power normalization's pace instead (the time-domain update's) still diverged
there: the no-harm output scale that keeps the time-domain update stable reads above 1 in
wrong-phase bins, so it rose as they grew. Raising the floor slows the weak bins of the whole
band, the trusted ones too, and did not help either. The cost: broadband content above the
band is not cancelled (docs/cancellation.md, "Algorithm").

numba has no np.fft in nopython mode, so the module carries a small iterative radix-2 FFT.
Two real partitions share one complex FFT (x_p + i x_{p+1}) and one inverse FFT, so an update
costs 1 + 2 ceil(P/2) transforms of size M. Everything works in preallocated arrays:
`update_state` (layout below, `state_size(B)` floats) and `twiddles` (`make_twiddles(M)`).
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

FASTMATH = {"reassoc", "contract", "nsz", "arcp"}


@nb.njit(cache=True)
def state_size(update_block: int) -> int:
    """Floats of `update_state` for an update block of `update_block` samples (0: none)."""
    if update_block <= 0:
        return 0
    return update_block + 8 * 2 * update_block


def make_twiddles(size: int) -> np.ndarray:
    """cos(2 pi k / size) then sin(2 pi k / size) for k < size / 2: the table `fft` reads."""
    if size < 2 or size & (size - 1):
        raise ValueError(f"FFT size must be a power of two >= 2, got {size}")
    k = np.arange(size // 2)
    return np.ascontiguousarray(np.concatenate([np.cos(2 * np.pi * k / size), np.sin(2 * np.pi * k / size)]))


@nb.njit(cache=True)
def history_length(taps: int, update_block: int) -> int:
    """Filtered-reference samples the update reads: the last partition's window reaches
    (P + 1) B - 1 samples back."""
    if update_block <= 0:
        return taps + 1
    partitions = (taps + update_block - 1) // update_block
    return max(taps + 1, (partitions + 1) * update_block)


@nb.njit(cache=True)
def trusted_bins(size: int, delay_tolerance: float) -> float:
    """Highest bin index (of an FFT of `size`) whose phase a delay error of `delay_tolerance`
    samples turns by at most 60 degrees (module docstring); every bin when it is 0."""
    if delay_tolerance <= 0.0:
        return float(size)
    return size / (6.0 * delay_tolerance)


@nb.njit(cache=True, nogil=True, fastmath=FASTMATH)
def fft(real, imag, twiddles, inverse):
    """In-place radix-2 FFT of real + i imag (size a power of two, the table from
    `make_twiddles(size)`). Forward: sum x[m] e^{-2 pi i k m / M}; inverse: the same with
    e^{+...} and without the 1/M (the caller folds it into its scale)."""
    size = real.shape[0]
    half_size = size // 2
    # Bit-reversed order.
    j = 0
    for i in range(1, size):
        bit = size >> 1
        while j & bit:
            j ^= bit
            bit >>= 1
        j |= bit
        if i < j:
            t = real[i]
            real[i] = real[j]
            real[j] = t
            t = imag[i]
            imag[i] = imag[j]
            imag[j] = t
    sign = 1.0 if inverse else -1.0
    length = 2
    while length <= size:
        half = length >> 1
        stride = size // length
        for start in range(0, size, length):
            for k in range(half):
                wr = twiddles[k * stride]
                wi = sign * twiddles[half_size + k * stride]
                a = start + k
                b = a + half
                tr = wr * real[b] - wi * imag[b]
                ti = wr * imag[b] + wi * real[b]
                real[b] = real[a] - tr
                imag[b] = imag[a] - ti
                real[a] += tr
                imag[a] += ti
        length <<= 1


@nb.njit(cache=True, nogil=True, fastmath=FASTMATH)
def update_weights(weights, filtered_buffer, position_filtered, update_state, twiddles, block,
                   step, leak, regularization, power_coef, bin_floor, delay_tolerance, blocks_seen):
    """One block update (module docstring). `filtered_buffer[position_filtered + m]` is
    x'(n - m), n the block's last sample; `update_state[:block]` its modified errors, oldest
    first. `leak` is the per-sample factor (1 - leakage), `power_coef` the per-sample power
    smoothing coefficient, `regularization` the time-domain one, `delay_tolerance` the samples
    the estimate's delay may be off (0: every bin trusted); `blocks_seen` counts the
    updates before this one (for the bias correction of the bin power). Returns
    blocks_seen + 1."""
    taps = weights.shape[0]
    size = 2 * block
    partitions = (taps + block - 1) // block
    errors = update_state[0:block]
    bin_power = update_state[block:block + size]
    z_real = update_state[block + size:block + 2 * size]
    z_imag = update_state[block + 2 * size:block + 3 * size]
    e_real = update_state[block + 3 * size:block + 4 * size]
    e_imag = update_state[block + 4 * size:block + 5 * size]
    g_real = update_state[block + 5 * size:block + 6 * size]
    g_imag = update_state[block + 6 * size:block + 7 * size]
    inverse_power = update_state[block + 7 * size:block + 8 * size]

    for m in range(block):
        e_real[m] = 0.0
        e_real[block + m] = errors[m]
    for m in range(size):
        e_imag[m] = 0.0
    fft(e_real, e_imag, twiddles, False)

    # Per-sample coefficients to per-block ones.
    block_coef = 1.0 - (1.0 - power_coef) ** block
    block_leak = leak ** block
    correction = 1.0 / (1.0 - (1.0 - block_coef) ** (blocks_seen + 1.0))
    bin_regularization = regularization * size / taps
    scale = step / taps

    for pair in range(0, partitions, 2):
        second = pair + 1 < partitions
        # x_p[m] = x'(n - pB - M + 1 + m) = filtered_buffer[position + pB + M - 1 - m]
        base_a = position_filtered + pair * block + size - 1
        base_b = base_a + block
        for m in range(size):
            z_real[m] = filtered_buffer[base_a - m]
            z_imag[m] = filtered_buffer[base_b - m] if second else 0.0
        fft(z_real, z_imag, twiddles, False)

        if pair == 0:
            total = 0.0
            for k in range(size):
                mirror = (size - k) & (size - 1)
                xr = 0.5 * (z_real[k] + z_real[mirror])
                xi = 0.5 * (z_imag[k] - z_imag[mirror])
                bin_power[k] += block_coef * (xr * xr + xi * xi - bin_power[k])
                if bin_power[k] < 1e-30:
                    bin_power[k] = 0.0
                total += bin_power[k]
            mean_power = correction * total / size
            floor = bin_floor * mean_power + bin_regularization
            trusted = trusted_bins(size, delay_tolerance)
            for k in range(size):
                if min(k, size - k) > trusted:
                    inverse_power[k] = 0.0
                else:
                    inverse_power[k] = 1.0 / (correction * bin_power[k] + floor)

        for k in range(size):
            mirror = (size - k) & (size - 1)
            # Split Z = X_a + i X_b into the two real partitions' spectra.
            ar = 0.5 * (z_real[k] + z_real[mirror])
            ai = 0.5 * (z_imag[k] - z_imag[mirror])
            br = 0.5 * (z_imag[k] + z_imag[mirror])
            bi = -0.5 * (z_real[k] - z_real[mirror])
            er = e_real[k] * inverse_power[k]
            ei = e_imag[k] * inverse_power[k]
            # conj(X) E for both, recombined as G_a + i G_b: both gradients are real signals,
            # so one inverse FFT returns G_a's in the real part and G_b's in the imaginary.
            gar = ar * er + ai * ei
            gai = ar * ei - ai * er
            gbr = br * er + bi * ei
            gbi = br * ei - bi * er
            g_real[k] = gar - gbi
            g_imag[k] = gai + gbr
        fft(g_real, g_imag, twiddles, True)

        start = pair * block
        count = min(block, taps - start)
        for j in range(count):
            weights[start + j] = block_leak * weights[start + j] - scale * g_real[j]
        if second:
            start += block
            count = min(block, taps - start)
            for j in range(count):
                weights[start + j] = block_leak * weights[start + j] - scale * g_imag[j]
    return blocks_seen + 1.0
