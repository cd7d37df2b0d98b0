"""Derive the impulse responses of the built-in plants (run: python -m simulator.presets.make_presets).

Each path is built from the physics that shapes it, at 48 kHz, deterministically:
  * acoustic propagation: a fractional delay of distance / 343 m/s (windowed sinc), with
    1/r spreading folded into the gain;
  * a loudspeaker: a 2nd-order high-pass at the driver's resonance (its Q gives the bump)
    and a 2nd-order low-pass where the cone breaks up;
  * passive isolation of an ear cup: a low-pass (mass law above the cup's resonance);
  * reflections: delayed, attenuated, low-passed copies (walls, the duct's open end).
The I/O latency is not part of the paths: the plant adds `latency_samples` itself.
See simulator/presets/README.md for the numbers and where they come from.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.signal

SAMPLE_RATE = 48000
SPEED_OF_SOUND = 343.0
HERE = Path(__file__).resolve().parent


def fractional_delay(delay_samples: float, length: int, gain: float = 1.0) -> np.ndarray:
    """Windowed-sinc fractional delay (Hann-windowed, 16 taps each side)."""
    n = np.arange(length)
    h = np.sinc(n - delay_samples) * gain
    window = np.clip(1.0 - np.abs(n - delay_samples) / 16.0, 0.0, 1.0)
    return h * (0.5 - 0.5 * np.cos(np.pi * window))


def propagation(distance_m: float, length: int, gain: float = 1.0) -> np.ndarray:
    return fractional_delay(distance_m / SPEED_OF_SOUND * SAMPLE_RATE, length, gain)


def loudspeaker(x: np.ndarray, resonance_hz: float, q: float, breakup_hz: float) -> np.ndarray:
    b, a = _second_order("highpass", resonance_hz, q)
    y = scipy.signal.lfilter(b, a, x)
    b, a = _second_order("lowpass", breakup_hz, 0.707)
    return scipy.signal.lfilter(b, a, y)


def _second_order(kind: str, f0: float, q: float) -> tuple[np.ndarray, np.ndarray]:
    """RBJ biquad."""
    w0 = 2 * np.pi * f0 / SAMPLE_RATE
    alpha = np.sin(w0) / (2 * q)
    cos = np.cos(w0)
    if kind == "lowpass":
        b = np.array([(1 - cos) / 2, 1 - cos, (1 - cos) / 2])
    else:
        b = np.array([(1 + cos) / 2, -(1 + cos), (1 + cos) / 2])
    a = np.array([1 + alpha, -2 * cos, 1 - alpha])
    return b / a[0], a / a[0]


def lowpass(x: np.ndarray, f0: float, q: float = 0.707) -> np.ndarray:
    b, a = _second_order("lowpass", f0, q)
    return scipy.signal.lfilter(b, a, x)


def headphone() -> dict[str, np.ndarray]:
    """Over-ear headphone: reference mic on the outside of the cup, error mic inside next to
    the driver, 2.5 cm of cup between them."""
    length = 256
    # Outside noise leaks through the cup: passive isolation is poor below ~300 Hz and grows
    # at 12 dB/octave above; the cup volume resonates mildly (Q 1.2).
    primary = lowpass(propagation(0.025, length, 0.8), 300.0, 1.2)
    # 40 mm driver: resonance 90 Hz (Q 1.0), breakup above 7 kHz, 8 mm to the error mic,
    # plus a weak reflection off the ear (2 cm further, -14 dB).
    direct = propagation(0.008, length, 0.9) + lowpass(propagation(0.028, length, 0.18), 3000.0)
    secondary = loudspeaker(direct, 90.0, 1.0, 7000.0)
    return {"primary_path": primary, "secondary_path": secondary}


def duct() -> dict[str, np.ndarray]:
    """Ventilation duct bench: reference mic 1.0 m upstream of the control speaker, error mic
    0.15 m downstream of it; noise travels with the flow, so the reference hears it 3.4 ms
    before the error mic."""
    length = 512
    # Plane wave down the duct with wall losses (gentle low-pass), and the reflection from
    # the open end 0.5 m past the error mic (-12 dB, low-passed: the end radiates highs).
    primary = lowpass(propagation(1.15, length, 0.9), 4000.0)
    primary += lowpass(propagation(1.15 + 1.0, length, 0.25), 800.0)
    # Wall-mounted 100 mm driver: resonance 70 Hz (Q 0.9), breakup 4 kHz; 0.15 m to the
    # error mic, and the wave it sends upstream bouncing back off a bend (-14 dB, +0.3 m).
    secondary = loudspeaker(propagation(0.15, 128, 0.8) + propagation(0.45, 128, 0.16), 70.0, 0.9, 4000.0)
    # Half the speaker's sound goes upstream and reaches the reference mic (1.0 m): the
    # acoustic feedback that feedback neutralization removes.
    feedback = loudspeaker(propagation(1.0, 256, 0.35), 70.0, 0.9, 4000.0)
    return {"primary_path": primary, "secondary_path": secondary, "feedback_path": feedback}


def headphone_stereo() -> dict[str, np.ndarray]:
    """Both cups of an over-ear headphone, as worn: the left cup is the `headphone` preset's; the
    right one sits on a head that is not symmetric and seals a little worse (a wider leak:
    less isolation, a higher, less damped cup resonance), and its driver is 2 mm further from
    the error mic with a stronger ear reflection. Crosstalk: each driver leaks out of its own
    cup (about -20 dB), spreads from the cup's surface (about 4 cm) to the other cup 0.2 m
    round the head (-14 dB) and comes in through that cup's passive isolation; skull
    conduction is left out (far weaker than that at these levels)."""
    length = 256
    left = headphone()
    right_primary = lowpass(propagation(0.028, length, 0.85), 340.0, 1.5)
    right_direct = propagation(0.010, length, 0.85) + lowpass(propagation(0.032, length, 0.24), 2500.0)
    right_secondary = loudspeaker(right_direct, 100.0, 0.9, 6500.0)

    def crosstalk(driver_q: float, resonance_hz: float, isolation_hz: float) -> np.ndarray:
        # -20 dB out of its own cup, and 1/r spreading from the cup's surface (about 4 cm from
        # the driver) to the other cup, 0.2 m round the head.
        leak = loudspeaker(propagation(0.20, length, 0.1 * 0.2), resonance_hz, driver_q, 7000.0)
        return lowpass(leak, isolation_hz, 1.2)

    return {
        "left_primary_path": left["primary_path"],
        "left_secondary_path": left["secondary_path"],
        "left_crosstalk_path": crosstalk(1.0, 90.0, 340.0),     # into the right cup
        "right_primary_path": right_primary,
        "right_secondary_path": right_secondary,
        "right_crosstalk_path": crosstalk(0.9, 100.0, 300.0),   # into the left cup
    }


def main() -> None:
    for name, paths in (("headphone", headphone()), ("duct", duct()), ("headphone-stereo", headphone_stereo())):
        for key, value in paths.items():
            np.save(HERE / f"{name}_{key}.npy", value.astype(np.float64))
            print(f"{name}_{key}.npy: {value.size} taps, peak at {int(np.argmax(np.abs(value)))}")


if __name__ == "__main__":
    main()
