"""anc-device: the runtime of a real-time active noise control rig.

Layers (imports point down; see docs/architecture.md): `device.cli` and `device.commands`
(command lines) <- `device.rig` (the real-rig edge) and the `simulator` package <- `device.core`
(engine, session, worker, kernels) <- `device.contract` (what the runtime and the cloud agent share).
"""

__version__ = "0.1.0"
