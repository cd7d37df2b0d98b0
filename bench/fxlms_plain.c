/* Plain normalized leaky FxLMS in C: the yardstick for the numba kernel's speed.
 *
 * The textbook algorithm only (no reference high-pass, no modified error, no limiter, fades
 * or watchdog), over a whole signal in one call, with the same double-length circular
 * buffers that let the dot products run over contiguous memory. Built by bench/kernel.py
 * with the system C compiler at -O3 -march=native -ffast-math (reassociation lets the dot products vectorize, as numba's fastmath does).
 */
#include <stdlib.h>
#include <string.h>

long fxlms_plain(const double *reference, const double *error, double *out, long n,
                 double *weights, int taps, const double *secondary_path, int path_taps,
                 double step, double leakage, double regularization)
{
    int span = taps > path_taps ? taps : path_taps;
    double *x = calloc(2 * (size_t)span, sizeof(double));        /* reference history */
    double *filtered = calloc(2 * (size_t)taps, sizeof(double)); /* filtered-reference history */
    if (!x || !filtered) {
        free(x);
        free(filtered);
        return -1;
    }
    int px = 0, pf = 0;
    double power = 0.0;
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
        pf = (pf == 0 ? taps : pf) - 1;
        filtered[pf] = filtered[pf + taps] = fx;
        power += fx * fx - oldest * oldest;
        if (power < 0.0)
            power = 0.0;
        double gain = step * error[i] / (regularization + power);
        const double *fs = filtered + pf;
        for (int j = 0; j < taps; j++)
            weights[j] = keep * weights[j] - gain * fs[j];
    }
    free(x);
    free(filtered);
    return n;
}
