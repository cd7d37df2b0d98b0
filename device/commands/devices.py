"""`anc-device devices`: PortAudio host APIs and devices, marking the configured ones."""

from __future__ import annotations

import json

from device.contract.config import load_config

NAME = "devices"
HELP = "list PortAudio host APIs and devices, marking those the configuration selects"


def add_arguments(parser) -> None:
    parser.add_argument("--config", help="YAML file overriding config/default.yaml")
    parser.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")


def _ms(value) -> str:
    return "-" if value is None else f"{value:.2f} ms"


def run(args) -> int:
    from device.rig.audio import import_sounddevice, list_devices

    cfg = load_config(args.config)
    sd = import_sounddevice()
    listing = list_devices(sd, cfg)
    if args.json:
        print(json.dumps(listing))
        return 0
    print(f"{listing['portaudio']}")
    print(f"host APIs: {', '.join(listing['host_apis']) or 'none'}")
    if not listing["devices"]:
        print("no audio devices: PortAudio found no sound card and no sound server. Check that the card is plugged in "
              "and listed by `aplay -l` / `arecord -l` (package alsa-utils), that this user is in the `audio` group, "
              "or start the JACK or PipeWire server the configuration names (audio.input_device / audio.output_device)")
        return 0
    print(f"{'':2} {'#':>3}  {'name':<40} {'host API':<12} {'in':>3} {'out':>3} {'rate':>7} {'low latency':>11}")
    for device in listing["devices"]:
        mark = {"input": "<", "output": ">"}
        marks = "".join(mark[m] for m in device["configured"]) or " "
        print(f"{marks:<2} {device['index']:>3}  {device['name'][:40]:<40} {device['host_api'][:12]:<12} "
              f"{device['input_channels']:>3} {device['output_channels']:>3} {device['default_sample_rate']:>7.0f} "
              f"{_ms(device['low_latency_ms']):>11}")
    if listing["selection_error"]:
        print(f"configured devices: {listing['selection_error']}")
    else:
        print("< configured input (microphones), > configured output (speaker)")
    return 0
