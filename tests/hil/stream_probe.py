"""Device side of the emulator tests: a plain `sounddevice` duplex stream, run in its own process.

PortAudio scans the JACK clients when `sounddevice` is imported, so this runs in a fresh
process started after the JACK server and the emulator's ports exist. It plays impulses on
output channel 0 (the speaker) at given stream frames, records both input channels, and
keeps the stream running (silence after the recording) until a line or EOF on stdin, so
the test can leave freewheel mode before this client closes.

    python tests/hil/stream_probe.py --device anc-plant --block 32 --frames 48000 \
        --impulse 4800 --impulse 9605 --out rec.npz

stdout: one JSON line when the stream has started, one when it has stopped.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", required=True)
    parser.add_argument("--block", type=int, required=True)
    parser.add_argument("--rate", type=int, default=48000)
    parser.add_argument("--frames", type=int, default=48000, help="stream frames to record")
    parser.add_argument("--impulse", type=int, action="append", default=[], help="stream frame of an impulse")
    parser.add_argument("--amplitude", type=float, default=0.5)
    parser.add_argument("--inputs", type=int, default=2, help="input channels opened (the first two are recorded)")
    parser.add_argument("--outputs", type=int, default=1, help="output channels opened")
    parser.add_argument("--impulse-channel", type=int, default=0, help="output channel the impulses are played on")
    parser.add_argument("--out", help="npz file for the recorded input (reference, error) and what was played")
    parser.add_argument("--list", action="store_true", help="print the devices PortAudio sees as JSON and exit")
    args = parser.parse_args()

    # The runtime's import: it rides out a JACK server that refuses one activation.
    from device.rig.audio import import_sounddevice
    sd = import_sounddevice()

    if args.list:
        apis = sd.query_hostapis()
        devices = [{"name": d["name"], "hostapi": apis[d["hostapi"]]["name"],
                    "inputs": d["max_input_channels"], "outputs": d["max_output_channels"]}
                   for d in sd.query_devices()]
        print(json.dumps({"event": "devices", "devices": devices}), flush=True)
        return 0

    frames = args.frames
    recorded = np.zeros((frames, max(2, args.inputs)), dtype=np.float32)
    played = np.zeros(frames, dtype=np.float32)
    for k in args.impulse:
        played[k] = args.amplitude
    state = {"position": 0, "callbacks": 0, "status_flags": 0, "odd_blocks": 0}

    def callback(indata, outdata, n, time_info, status):
        if status:
            state["status_flags"] += 1
        if n != args.block:
            state["odd_blocks"] += 1
        a = state["position"]
        b = min(a + n, frames)
        outdata.fill(0.0)
        if b > a:
            recorded[a:b, :indata.shape[1]] = indata[:b - a]
            outdata[:b - a, args.impulse_channel] = played[a:b]
        state["position"] = a + n
        state["callbacks"] += 1

    stream = sd.Stream(device=args.device, samplerate=args.rate, blocksize=args.block,
                       channels=(args.inputs, args.outputs),
                       dtype="float32", callback=callback)
    device = sd.query_devices(stream.device[0])
    stream.start()
    print(json.dumps({"event": "started", "device": device["name"],
                      "hostapi": sd.query_hostapis(device["hostapi"])["name"],
                      "latency_s": list(stream.latency)}), flush=True)
    sys.stdin.readline()
    stream.stop()
    stream.close()
    if args.out:
        np.savez(args.out, reference=recorded[:, 0], error=recorded[:, 1], inputs=recorded, played=played)
    print(json.dumps({"event": "stopped", "frames": state["position"], "callbacks": state["callbacks"],
                      "status_flags": state["status_flags"], "odd_blocks": state["odd_blocks"]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
