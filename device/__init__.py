"""anc-device: the runtime of a real-time active noise control rig."""

__version__ = "0.1.0"
