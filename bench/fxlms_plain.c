/* Plain normalized leaky FxLMS in C: the yardstick for the numba kernel's speed, with the
 * time-domain update (fxlms_plain, band-limited as the kernel's is when band_b0 != 0: the
 * update sees the filtered reference and the error through one low-pass biquad and is
 * normalized by the low-passed power) and the partitioned one (fxlms_partitioned_plain).
 *
 * The textbook algorithm only (no reference high-pass, no modified error, no limiter, fades
 * or watchdog), over a whole signal in one call, with the same double-length circular
 * buffers that let the dot products run over contiguous memory. Built by bench/kernel.py
 * with the system C compiler at -O3 -march=native -ffast-math (reassociation lets the dot products vectorize, as numba's fastmath does).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

long fxlms_plain(const double *reference, const double *error, double *out, long n,
                 double *weights, int taps, const double *secondary_path, int path_taps,
                 double step, double leakage, double regularization,
                 double band_b0, double band_b1, double band_b2, double band_a1, double band_a2)
{
    int span = taps > path_taps ? taps : path_taps;
    int band = band_b0 != 0.0;
    double *x = calloc(2 * (size_t)span, sizeof(double));        /* reference history */
    double *filtered = calloc(2 * (size_t)taps, sizeof(double)); /* filtered-reference history */
    double *banded = calloc(2 * (size_t)taps, sizeof(double));   /* its low-passed history */
    if (!x || !filtered || !banded) {
        free(x);
        free(filtered);
        free(banded);
        return -1;
    }
    int px = 0, pf = 0;
    double power = 0.0, band_power = 0.0;
    double bx1 = 0.0, bx2 = 0.0, by1 = 0.0, by2 = 0.0, ex1 = 0.0, ex2 = 0.0, ey1 = 0.0, ey2 = 0.0;
    double keep = 1.0 - leakage;
    for (long i = 0; i < n; i++) {
        px = (px == 0 ? span : px) - 1;          /* newest sample at x[px], x[px + span] */
        x[px] = x[px + span] = reference[i];
        const double *xs = x + px;
        double fx = 0.0, y = 0.0;
        for (int j = 0; j < path_taps; j++)
            fx += secondary_path[j] * xs[j];
        for (int j = 0; j < taps; j++)
            y += weights[j] * xs[j];
        out[i] = y;
        double oldest = filtered[pf + taps - 1];
        double oldest_banded = banded[pf + taps - 1];
        pf = (pf == 0 ? taps : pf) - 1;
        filtered[pf] = filtered[pf + taps] = fx;
        power += fx * fx - oldest * oldest;
        if (power < 0.0)
            power = 0.0;
        double gain;
        const double *fs;
        if (band) {
            double xb = band_b0 * fx + band_b1 * bx1 + band_b2 * bx2 - band_a1 * by1 - band_a2 * by2;
            bx2 = bx1; bx1 = fx; by2 = by1; by1 = xb;
            banded[pf] = banded[pf + taps] = xb;
            band_power += xb * xb - oldest_banded * oldest_banded;
            if (band_power < 0.0)
                band_power = 0.0;
            double eb = band_b0 * error[i] + band_b1 * ex1 + band_b2 * ex2 - band_a1 * ey1 - band_a2 * ey2;
            ex2 = ex1; ex1 = error[i]; ey2 = ey1; ey1 = eb;
            gain = step * eb / (regularization + band_power);
            fs = banded + pf;
        } else {
            gain = step * error[i] / (regularization + power);
            fs = filtered + pf;
        }
        for (int j = 0; j < taps; j++)
            weights[j] = keep * weights[j] - gain * fs[j];
    }
    free(x);
    free(filtered);
    free(banded);
    return n;
}

/* The partitioned frequency-domain update of device/core/dsp/partitioned.py in plain C: the
 * output stays w . r every sample, the gradient is computed every `block` samples per
 * partition with a radix-2 FFT of size 2 * block, each bin normalized by its smoothed power,
 * two real partitions per complex transform. Same textbook simplifications as above. */

static void fft_inplace(double *re, double *im, int n, const double *cosines, const double *sines, int inverse)
{
    for (int i = 1, j = 0; i < n; i++) {
        int bit = n >> 1;
        for (; j & bit; bit >>= 1)
            j ^= bit;
        j |= bit;
        if (i < j) {
            double t = re[i]; re[i] = re[j]; re[j] = t;
            t = im[i]; im[i] = im[j]; im[j] = t;
        }
    }
    double sign = inverse ? 1.0 : -1.0;
    for (int length = 2; length <= n; length <<= 1) {
        int half = length >> 1, stride = n / length;
        for (int start = 0; start < n; start += length)
            for (int k = 0; k < half; k++) {
                double wr = cosines[k * stride], wi = sign * sines[k * stride];
                int a = start + k, b = a + half;
                double tr = wr * re[b] - wi * im[b], ti = wr * im[b] + wi * re[b];
                re[b] = re[a] - tr; im[b] = im[a] - ti;
                re[a] += tr; im[a] += ti;
            }
    }
}

long fxlms_partitioned_plain(const double *reference, const double *error, double *out, long n,
                             double *weights, int taps, const double *secondary_path, int path_taps,
                             double step, double leakage, double regularization, int block,
                             double power_coef, double bin_floor, double delay_tolerance)
{
    int size = 2 * block;
    int partitions = (taps + block - 1) / block;
    int span = taps > path_taps ? taps : path_taps;
    int history = (partitions + 1) * block;
    double *x = calloc(2 * (size_t)span, sizeof(double));
    double *filtered = calloc(2 * (size_t)history, sizeof(double));
    double *work = calloc((size_t)block + 9 * (size_t)size, sizeof(double));
    if (!x || !filtered || !work) {
        free(x); free(filtered); free(work);
        return -1;
    }
    double *errors = work, *bin_power = work + block;
    double *zr = bin_power + size, *zi = zr + size, *er = zi + size, *ei = er + size;
    double *gr = ei + size, *gi = gr + size, *inverse_power = gi + size, *cosines = inverse_power + size;
    double *sines = cosines + size / 2;
    for (int k = 0; k < size / 2; k++) {
        cosines[k] = cos(2.0 * M_PI * k / size);
        sines[k] = sin(2.0 * M_PI * k / size);
    }
    double block_coef = 1.0 - pow(1.0 - power_coef, block);
    double block_leak = pow(1.0 - leakage, block);
    double bin_regularization = regularization * size / taps, scale = step / taps;
    long blocks_seen = 0;
    int px = 0, pf = 0, fill = 0;
    for (long i = 0; i < n; i++) {
        px = (px == 0 ? span : px) - 1;
        x[px] = x[px + span] = reference[i];
        const double *xs = x + px;
        double fx = 0.0, y = 0.0;
        for (int j = 0; j < path_taps; j++)
            fx += secondary_path[j] * xs[j];
        for (int j = 0; j < taps; j++)
            y += weights[j] * xs[j];
        out[i] = y;
        pf = (pf == 0 ? history : pf) - 1;
        filtered[pf] = filtered[pf + history] = fx;
        errors[fill++] = error[i];
        if (fill < block)
            continue;
        fill = 0;
        for (int m = 0; m < block; m++) {
            er[m] = 0.0;
            er[block + m] = errors[m];
        }
        memset(ei, 0, sizeof(double) * size);
        fft_inplace(er, ei, size, cosines, sines, 0);
        blocks_seen++;
        double correction = 1.0 / (1.0 - pow(1.0 - block_coef, (double)blocks_seen));
        for (int pair = 0; pair < partitions; pair += 2) {
            int second = pair + 1 < partitions;
            const double *wa = filtered + pf + pair * block + size - 1, *wb = wa + block;
            for (int m = 0; m < size; m++) {
                zr[m] = wa[-m];
                zi[m] = second ? wb[-m] : 0.0;
            }
            fft_inplace(zr, zi, size, cosines, sines, 0);
            if (pair == 0) {
                double total = 0.0;
                for (int k = 0; k < size; k++) {
                    int mirror = (size - k) & (size - 1);
                    double xr = 0.5 * (zr[k] + zr[mirror]), xi = 0.5 * (zi[k] - zi[mirror]);
                    bin_power[k] += block_coef * (xr * xr + xi * xi - bin_power[k]);
                    total += bin_power[k];
                }
                double floor = bin_floor * correction * total / size + bin_regularization;
                /* Bins a delay error of delay_tolerance samples could turn by over 60 degrees are left alone. */
                double trusted = delay_tolerance > 0.0 ? size / (6.0 * delay_tolerance) : size;
                for (int k = 0; k < size; k++) {
                    int frequency = k < size - k ? k : size - k;
                    inverse_power[k] = frequency > trusted ? 0.0 : 1.0 / (correction * bin_power[k] + floor);
                }
            }
            for (int k = 0; k < size; k++) {
                int mirror = (size - k) & (size - 1);
                double ar = 0.5 * (zr[k] + zr[mirror]), ai = 0.5 * (zi[k] - zi[mirror]);
                double br = 0.5 * (zi[k] + zi[mirror]), bi = -0.5 * (zr[k] - zr[mirror]);
                double e_r = er[k] * inverse_power[k], e_i = ei[k] * inverse_power[k];
                gr[k] = (ar * e_r + ai * e_i) - (br * e_i - bi * e_r);
                gi[k] = (ar * e_i - ai * e_r) + (br * e_r + bi * e_i);
            }
            fft_inplace(gr, gi, size, cosines, sines, 1);
            for (int j = 0, start = pair * block; j < block && start + j < taps; j++)
                weights[start + j] = block_leak * weights[start + j] - scale * gr[j];
            if (second)
                for (int j = 0, start = (pair + 1) * block; j < block && start + j < taps; j++)
                    weights[start + j] = block_leak * weights[start + j] - scale * gi[j];
        }
    }
    free(x); free(filtered); free(work);
    return n;
}
