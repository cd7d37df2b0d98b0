"""`anc-device latency`: can this rig cancel broadband noise, or only tonal noise?

Two measurements on one duplex stream, the controller off:

1. Ambient (speaker silent, `--ambient-s` seconds): the acoustic lead of the reference mic
   over the error mic, from the room's own noise. A least-squares FIR from the reference to
   the error mic, allowed to start up to `MAX_LAG_S` *before* the reference (a negative
   lead), gives the relative impulse response; its onset is the lead. Tonal or too-quiet
   ambient noise cannot tell a delay, which the fit's modelling error shows; then the lead is
   reported as not measurable rather than guessed.
2. Probe (the identification probe): the loop delay from the speaker output to the error mic
   input, converters, buffers and acoustics included: the cross-correlation of the (white)
   probe with the error mic finds the response within `MAX_LOOP_DELAY_S`, and a least-squares
   FIR around it gives the onset (first tap at 20% of the peak) without the probe's own
   autocorrelation leakage.

Broadband feedforward cancellation is possible only when the lead covers the loop delay
(the same verdict the simulator gives for its plants, `device.core.causality`).
"""

from __future__ import annotations

import json

import numpy as np

from device.contract.config import load_config
from device.contract.errors import UserError

NAME = "latency"
HELP = "measure the loop delay and the reference mic's acoustic lead; say if broadband cancellation is possible"

MAX_LAG_S = 0.002          # s, how far the reference mic may lag the error mic and still be measured
MAX_LEAD_S = 0.010         # s, longest lead looked for
MAX_LOOP_DELAY_S = 0.100   # s, longest loop delay looked for (USB audio can be tens of ms)
AMBIENT_FIT_MAX_DB = -6.0  # modelling error above which the ambient noise cannot tell a delay
PREROLL_S = 0.5


def add_arguments(parser) -> None:
    parser.add_argument("--config", help="YAML file overriding config/default.yaml")
    parser.add_argument("--ambient-s", type=float, default=5.0,
                        help="seconds of ambient noise recorded with the speaker silent (default 5)")
    parser.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")


def loop_impulse_response(played: np.ndarray, recorded: np.ndarray, max_lag: int) -> np.ndarray:
    """Impulse response from a white probe: cross-correlation over the probe's energy."""
    n = played.size + max_lag
    size = 1 << int(np.ceil(np.log2(n + recorded.size)))
    spectrum = np.fft.rfft(recorded, size) * np.conj(np.fft.rfft(played, size))
    correlation = np.fft.irfft(spectrum, size)[:max_lag]
    return correlation / max(float(np.dot(played, played)), 1e-30)


REFINE_TAPS = 256      # least-squares window around the coarse onset
REFINE_LEAD = 32       # taps of it before the coarse onset


def refine_onset(played: np.ndarray, recorded: np.ndarray, coarse: int) -> int:
    """The onset from a least-squares FIR around the cross-correlation's onset. A finite
    noise probe's autocorrelation is not a perfect impulse, and that leakage can move a
    20%-of-peak threshold by a sample; the least-squares fit has no such leakage."""
    from device.core.causality import onset
    from device.core.dsp.lsfir import fit_fir

    first = max(0, coarse - REFINE_LEAD)
    # recorded[n + first] = sum_m h[m + first] played[n - m]: fit g[m] = h[m + first].
    target = recorded[first:first + played.size]
    source = played[:target.size]
    if source.size < 8 * REFINE_TAPS:
        return coarse
    return first + onset(fit_fir(source, target, REFINE_TAPS))


def reference_lead(reference: np.ndarray, error: np.ndarray, fs: int) -> tuple[int | None, float]:
    """(lead in samples or None, modelling error dB) of the error mic relative to the reference.
    None when the ambient noise cannot tell: too tonal, too short, or not explained by a delay."""
    from device.core.causality import onset
    from device.core.dsp.identification import MIN_AMBIENT_FLATNESS, spectral_flatness
    from device.core.dsp.lsfir import apply_fir, fit_fir

    if spectral_flatness(reference, fs) < MIN_AMBIENT_FLATNESS:
        return None, 0.0  # tonal ambient noise fits any delay modulo its period
    max_lag = int(MAX_LAG_S * fs)
    taps = max_lag + int(MAX_LEAD_S * fs)
    # x[n] = reference[n + max_lag]: tap k of the fit is a delay of k - max_lag samples.
    x = reference[max_lag:]
    d = error[:x.size]
    if x.size < 8 * taps or float(np.dot(x, x)) <= 0.0:
        return None, 0.0
    response = fit_fir(x, d, taps)
    residual = d - apply_fir(response, x)
    quality = 10 * np.log10((np.dot(residual[taps:], residual[taps:]) + 1e-300) / (np.dot(d[taps:], d[taps:]) + 1e-300))
    if quality > AMBIENT_FIT_MAX_DB:
        return None, float(quality)
    return onset(response) - max_lag, float(quality)


def measure(sd, cfg, spec, ambient_s: float) -> dict:
    from device.rig.audio import play_and_record
    from device.core.causality import Causality, onset
    from device.core.dsp.identification import configured_probe, spectral_flatness

    fs = spec.sample_rate
    probe = configured_probe(cfg.identification, fs)
    preroll, ambient, max_delay = int(PREROLL_S * fs), int(ambient_s * fs), int(MAX_LOOP_DELAY_S * fs)
    played = np.concatenate([np.zeros(preroll + ambient), probe, np.zeros(max_delay)])
    recording = play_and_record(sd, spec, played)

    start = preroll + ambient
    played_probe = recording.played[start:start + probe.size].astype(np.float64)
    recorded = recording.error[start:].astype(np.float64)
    response = loop_impulse_response(played_probe, recorded, max_delay)
    loop_delay = refine_onset(played_probe, recorded, onset(response))
    peak_to_floor_db = 20 * np.log10(np.max(np.abs(response)) / (np.median(np.abs(response)) + 1e-30))

    ambient_ref = recording.reference[preroll:preroll + ambient].astype(np.float64)
    ambient_err = recording.error[preroll:preroll + ambient].astype(np.float64)
    ambient_dbfs = 10 * np.log10(np.mean(ambient_err ** 2) + 1e-30)
    lead, fit_db = reference_lead(ambient_ref, ambient_err, fs)
    flatness = spectral_flatness(ambient_ref, fs)

    def ms(samples):
        return None if samples is None else round(samples * 1e3 / fs, 3)

    result = {
        "device": spec.describe(),
        "sample_rate": fs,
        "block_size": spec.block_size,
        "loop_delay_samples": int(loop_delay),
        "loop_delay_ms": ms(loop_delay),
        "loop_delay_blocks": round(loop_delay / spec.block_size, 2),
        "loop_response_peak_to_floor_db": round(float(peak_to_floor_db), 1),
        "ambient_level_dbfs": round(float(ambient_dbfs), 1),
        "xruns": recording.xruns,
        "ambient_flatness": round(flatness, 3),
        "ambient_fit_db": round(fit_db, 2),
        "reference_lead_samples": lead,
        "reference_lead_ms": ms(lead),
    }
    if lead is None:
        result["broadband_possible"] = None
        result["verdict"] = (
            f"the reference mic's lead is not measurable from this ambient noise (spectral flatness {flatness:.3f}, "
            f"fit {fit_db:.1f} dB; it needs broadband noise reaching both mics); the loop delay is {ms(loop_delay)} ms, so broadband noise is "
            f"cancellable only if the reference mic hears it at least that much earlier than the error mic")
    else:
        causality = Causality(acoustic_lead_samples=lead, control_delay_samples=int(loop_delay), sample_rate=fs)
        result["broadband_possible"] = causality.broadband_possible
        result["margin_ms"] = ms(causality.margin_samples)
        result["verdict"] = causality.explain().replace("on this plant", "on this rig")
    return result


def run(args) -> int:
    from device.rig.audio import import_sounddevice, resolve_stream

    if not 0.5 <= args.ambient_s <= 120:
        raise UserError(f"--ambient-s: expected 0.5 to 120 seconds, got {args.ambient_s}")
    cfg = load_config(args.config)
    sd = import_sounddevice()
    spec = resolve_stream(sd, cfg)
    if spec.ears:
        # One ear at a time: its probe, its error mic, its reference mic's lead and verdict.
        results = {name: measure(sd, cfg, spec.for_ear(name), args.ambient_s) for name in spec.ear_names}
        if args.json:
            print(json.dumps({"ears": results}))
            return 0
        for name, result in results.items():
            print(f"ear             {name}")
            _print_result(result)
        return 0
    result = measure(sd, cfg, spec, args.ambient_s)
    if args.json:
        print(json.dumps(result))
        return 0
    _print_result(result)
    return 0


def _print_result(result: dict) -> None:
    print(f"device          {result['device']}")
    print(f"loop delay      {result['loop_delay_samples']} samples = {result['loop_delay_ms']} ms "
          f"({result['loop_delay_blocks']} blocks; speaker out to error mic in, converters included)")
    if result["reference_lead_samples"] is None:
        print(f"reference lead  not measurable (ambient {result['ambient_level_dbfs']} dBFS, fit {result['ambient_fit_db']} dB)")
    else:
        print(f"reference lead  {result['reference_lead_samples']} samples = {result['reference_lead_ms']} ms "
              f"(ambient {result['ambient_level_dbfs']} dBFS)")
    print(f"verdict         {result['verdict']}")
