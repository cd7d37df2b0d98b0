"""The simulator: acoustic plants (presets and YAML), scenes, the closed loop, the causal optimum,
the report and the JACK plant emulator. It builds on `device.core` like the rig does."""
