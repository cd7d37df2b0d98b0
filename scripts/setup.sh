#!/usr/bin/env bash
# Sets up everything anc-device needs on a Debian/Ubuntu machine: the system packages
# (PortAudio, libsndfile, JACK and mosquitto for the bench and broker tests) and a
# virtual environment in .venv with the project installed in editable mode.
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(python3-venv python3-pip libportaudio2 libsndfile1 mosquitto jackd2 systemd)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    echo "setup: installing system packages: ${missing[*]}"
    $sudo_cmd apt-get update -qq
    # jackd2 asks about real-time priority; the default answer is fine here.
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# mosquitto's package starts a broker on port 1883; the tests start their own on free ports.

venv=".venv"
stamp="$venv/.installed"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: installing Python packages into $venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
    # The build backend warns that an editable install can be shadowed by same-named folders;
    # that is the intent here (the repository is the install), so keep the output clean.
    PYTHONWARNINGS=ignore "$venv/bin/python" -m pip install -q -e ".[all,test]"
    touch "$stamp"
fi
