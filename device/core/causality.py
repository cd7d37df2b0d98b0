"""Can the anti-noise arrive in time? The causality verdict shared by the simulator and the rig.

Feedforward control can only cancel broadband noise when the noise reaches the error mic
later than the anti-noise can: the reference mic's acoustic lead must cover the I/O latency
plus the speaker-to-error-mic delay. Otherwise only predictable (tonal) noise cancels.
The simulator computes both numbers from its plant; `anc-device latency` measures them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Causality:
    acoustic_lead_samples: int     # reference mic ahead of the error mic
    control_delay_samples: int     # I/O latency + speaker-to-error-mic delay
    sample_rate: int

    @property
    def margin_samples(self) -> int:
        return self.acoustic_lead_samples - self.control_delay_samples

    @property
    def broadband_possible(self) -> bool:
        return self.margin_samples >= 0

    def ms(self, samples: int) -> float:
        return samples * 1000.0 / self.sample_rate

    def explain(self) -> str:
        lead, needed = self.ms(self.acoustic_lead_samples), self.ms(self.control_delay_samples)
        if self.broadband_possible:
            return (f"broadband cancellation is possible: the noise reaches the error mic {lead:.2f} ms after the "
                    f"reference mic, and the anti-noise needs {needed:.2f} ms to get there "
                    f"({self.ms(self.margin_samples):.2f} ms to spare)")
        return (f"broadband cancellation is impossible on this plant: the noise reaches the error mic {lead:.2f} ms "
                f"after the reference mic, but the anti-noise needs {needed:.2f} ms (I/O latency plus speaker path); "
                f"only tonal or otherwise predictable noise can be cancelled")

    def to_dict(self) -> dict:
        return {
            "acoustic_lead_ms": round(self.ms(self.acoustic_lead_samples), 3),
            "control_delay_ms": round(self.ms(self.control_delay_samples), 3),
            "margin_ms": round(self.ms(self.margin_samples), 3),
            "broadband_possible": self.broadband_possible,
        }


def onset(h: np.ndarray, fraction: float = 0.2) -> int:
    """First sample where |h| reaches `fraction` of its peak: the arrival of the direct sound."""
    magnitude = np.abs(np.asarray(h))
    return int(np.argmax(magnitude >= fraction * magnitude.max()))
