#!/usr/bin/env bash
# Installs anc-device on a Raspberry Pi (64-bit Raspberry Pi OS) from this checkout: users and
# groups, the virtual environment in /opt/anc-device/venv, the site configuration in
# /etc/anc-device, the state directories and both systemd units. Layout and reasons:
# docs/install.md.
#
# Safe to run again: it never overwrites /etc/anc-device/*.yaml, the spool or a model already
# in /var/lib/anc-device/models (a model-update job may have replaced it); it does reinstall
# the package and the unit files, which are ours.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: sudo systemd/install.sh [--now] [--no-cloud] [--dry-run] [--root DIR]

  --now         start anc-device after enabling it (and anc-cloud-sync once provisioned)
  --no-cloud    install without the cloud extra (paho-mqtt, boto3, awsiotsdk, cryptography);
                anc-cloud-sync is then installed but not enabled
  --dry-run     print what would be done, change nothing
  --root DIR    lay the files out under DIR instead of / (a staging root, e.g. for an image
                or a test); skips users, ownership, apt, pip and systemctl
  --prefix DIR  same as --root
EOF
}

checkout=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
root=""
dry_run=0
start_now=0
with_cloud=1

while [ $# -gt 0 ]; do
    case "$1" in
        --root|--prefix)
            [ $# -ge 2 ] || { usage >&2; exit 2; }
            root=$2
            shift 2
            ;;
        --root=*|--prefix=*) root=${1#*=}; shift ;;
        --dry-run) dry_run=1; shift ;;
        --now) start_now=1; shift ;;
        --no-cloud) with_cloud=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install: unknown option: $1" >&2; usage >&2; exit 2 ;;
    esac
done

staging=0
if [ -n "$root" ]; then
    staging=1
    root=$(realpath -m "$root")
    [ "$root" != "/" ] || root=""
fi

# Where things live on the target system (the paths written into configs and units).
opt_dir=/opt/anc-device
venv=$opt_dir/venv
etc_dir=/etc/anc-device
state_dir=/var/lib/anc-device
models_dir=$state_dir/models
spool_path=$state_dir/spool.sqlite
agent_state_dir=/var/lib/anc-cloud-sync
cache_dir=/var/cache/anc-device
unit_dir=/etc/systemd/system
model_name=noise_classifier.onnx
# Debian's ca-certificates ships the root that signs the IoT Core ATS endpoints.
amazon_root_ca=/etc/ssl/certs/Amazon_Root_CA_1.pem

say() { printf 'install: %s\n' "$*"; }
die() { printf 'install: error: %s\n' "$*" >&2; exit 1; }

# Runs a command, or prints it under --dry-run.
run() {
    if [ "$dry_run" -eq 1 ]; then
        printf 'install: would run:'
        printf ' %q' "$@"
        printf '\n'
    else
        "$@"
    fi
}

# make_dir MODE OWNER GROUP PATH: create (or fix the mode and owner of) a directory.
make_dir() {
    local mode=$1 owner=$2 group=$3 path=$root$4
    if [ "$staging" -eq 1 ]; then
        run install -d -m "$mode" "$path"
    else
        run install -d -m "$mode" -o "$owner" -g "$group" "$path"
    fi
}

# set_owner OWNER GROUP PATH: chown, except in a staging root (the users may not exist there).
set_owner() {
    [ "$staging" -eq 1 ] || run chown "$1:$2" "$3"
}

# write_if_absent MODE OWNER GROUP PATH: write stdin to PATH unless it exists. The file appears
# complete or not at all (temporary file, then rename).
write_if_absent() {
    local mode=$1 owner=$2 group=$3 path=$root$4 content tmp
    content=$(cat)
    if [ -e "$path" ]; then
        say "keeping $path (exists; never overwritten)"
        return 0
    fi
    if [ "$dry_run" -eq 1 ]; then
        say "would write $path (mode $mode):"
        printf '%s\n' "$content" | sed 's/^/    | /'
        return 0
    fi
    tmp=$(mktemp "$(dirname "$path")/.$(basename "$path").XXXXXX")
    printf '%s\n' "$content" >"$tmp"
    chmod "$mode" "$tmp"
    set_owner "$owner" "$group" "$tmp"
    mv "$tmp" "$path"
    say "wrote $path"
}

# copy_if_absent MODE OWNER GROUP SOURCE PATH
copy_if_absent() {
    local mode=$1 owner=$2 group=$3 source=$4 path=$root$5
    if [ -e "$path" ]; then
        say "keeping $path (exists)"
        return 0
    fi
    run install -m "$mode" "$source" "$path"
    set_owner "$owner" "$group" "$path"
    [ "$dry_run" -eq 1 ] || say "installed $path"
}

# install_unit NAME: the unit files are ours; local changes go into drop-ins.
install_unit() {
    local source=$checkout/systemd/$1 path=$root$unit_dir/$1
    if [ -e "$path" ] && cmp -s "$source" "$path"; then
        say "unit $path is up to date"
        return 0
    fi
    run install -m 0644 "$source" "$path"
    [ "$dry_run" -eq 1 ] || say "installed unit $path"
}

# -- checks ----------------------------------------------------------------------------------
for file in pyproject.toml config/cloud_sync.yaml systemd/anc-device.service \
            systemd/anc-cloud-sync.service "models/$model_name" "models/${model_name%.onnx}.json"; do
    [ -f "$checkout/$file" ] || die "$checkout/$file is missing: run this script from an anc-device checkout"
done
if [ "$staging" -eq 0 ] && [ "$dry_run" -eq 0 ] && [ "$(id -u)" -ne 0 ]; then
    die "run as root (sudo $0), or use --root DIR to lay the files out in a staging directory"
fi
if [ "$staging" -eq 1 ]; then
    say "staging root $root: users, ownership, apt, pip and systemctl are skipped"
fi
[ "$dry_run" -eq 0 ] || say "dry run: nothing is changed"

# -- users and groups ------------------------------------------------------------------------
# anc-device (the runtime) and anc-sync (the cloud agent) share group anc for the spool and
# the control channel in /var/lib/anc-device; only the runtime is in group audio.
if [ "$staging" -eq 0 ]; then
    getent group audio >/dev/null || run groupadd --system audio
    getent group anc >/dev/null || run groupadd --system anc
    if ! id -u anc-device >/dev/null 2>&1; then
        run useradd --system --gid anc --groups audio --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin --comment "anc-device runtime" anc-device
    fi
    # A user that existed before (an earlier install, created by hand) gets the groups too.
    run usermod --append --groups audio,anc anc-device
    if ! id -u anc-sync >/dev/null 2>&1; then
        run useradd --system --gid anc --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin --comment "anc-device cloud sync agent" anc-sync
    fi
    run usermod --append --groups anc anc-sync
fi

# -- directories -----------------------------------------------------------------------------
make_dir 0755 root root "$opt_dir"
make_dir 0755 root root "$etc_dir"
# setgid: files the agent creates here stay in group anc, readable by the runtime and back.
make_dir 2770 anc-device anc "$state_dir"
make_dir 2770 anc-device anc "$models_dir"
make_dir 0700 anc-device anc "$cache_dir"
make_dir 0700 anc-sync anc "$agent_state_dir"
make_dir 0700 anc-sync anc "$agent_state_dir/certs"
make_dir 0700 anc-sync anc "$agent_state_dir/claim"
make_dir 0755 root root "$unit_dir"

# -- system packages and the virtual environment ---------------------------------------------
if [ "$staging" -eq 0 ]; then
    missing=()
    for package in python3-venv python3-pip libportaudio2 libsndfile1 ca-certificates; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$package")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing system packages: ${missing[*]}"
        run apt-get update -qq
        run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    fi
    if [ ! -x "$venv/bin/python" ]; then
        say "creating $venv"
        run python3 -m venv "$venv"
    fi
    requirement=$checkout
    [ "$with_cloud" -eq 0 ] || requirement="${checkout}[cloud]"
    say "installing $requirement into $venv"
    run "$venv/bin/python" -m pip install --upgrade "$requirement"
    # The wheel carries the defaults (package device.defaults) and the classifier model.
fi

# -- model, spool ----------------------------------------------------------------------------
copy_if_absent 0644 anc-device anc "$checkout/models/$model_name" "$models_dir/$model_name"
copy_if_absent 0644 anc-device anc "$checkout/models/${model_name%.onnx}.json" \
    "$models_dir/${model_name%.onnx}.json"
# SQLite creates a database 0644 whatever the umask allows, and gives its -wal/-shm files the
# database's mode: an empty file made here, group-writable, keeps all three writable by both
# the runtime and the agent (an empty file is a valid empty database).
if [ ! -e "$root$spool_path" ]; then
    run install -m 0660 /dev/null "$root$spool_path"
    set_owner anc-device anc "$root$spool_path"
    [ "$dry_run" -eq 1 ] || say "created $root$spool_path"
fi

# -- configuration ---------------------------------------------------------------------------
write_if_absent 0644 root root "$etc_dir/config.yaml" <<EOF
# anc-device site configuration, merged over the packaged defaults (config/default.yaml in
# the source tree lists every key with its unit): only the keys that differ belong here.
# Written once by systemd/install.sh, which never overwrites it.
runtime:
  state_dir: $state_dir
spool:
  path: $spool_path
classifier:
  # A copy of the packaged model; model-update jobs replace it in place.
  model: $models_dir/$model_name
EOF

# The agent's site file is merged over its packaged defaults too: only what differs. The spool,
# its budget and the state directory come from the runtime's file, so the two always agree.
write_if_absent 0640 root anc "$etc_dir/cloud_sync.yaml" <<EOF
# anc-cloud-sync configuration for this device, merged over the packaged defaults
# (config/cloud_sync.yaml in the source tree lists every key with its unit). Written once by
# systemd/install.sh, never overwritten; \`anc-cloud-sync provision\` fills in the identity.
thing_name: null
runtime_config: config.yaml  # the runtime's file beside this one
status_file: $agent_state_dir/status.json
mqtt:
  ca_file: $amazon_root_ca
  cert_file: $agent_state_dir/certs/device.pem.crt
  key_file: $agent_state_dir/certs/private.pem.key
provisioning:
  claim_cert_file: $agent_state_dir/claim/claim.pem.crt
  claim_key_file: $agent_state_dir/claim/claim.pem.key
  credentials_dir: $agent_state_dir/certs
jobs:
  models_dir: $models_dir
EOF

# -- units -----------------------------------------------------------------------------------
install_unit anc-device.service
install_unit anc-cloud-sync.service

if [ "$staging" -eq 1 ]; then
    if [ "$dry_run" -eq 1 ]; then
        say "dry run done"
    else
        say "done: files laid out under $root"
    fi
    exit 0
fi

# -- check and enable ------------------------------------------------------------------------
if [ "$dry_run" -eq 0 ]; then
    "$venv/bin/python" -c 'import sys; from device.contract.config import load_config; load_config(sys.argv[1])' \
        "$etc_dir/config.yaml" || die "$etc_dir/config.yaml does not validate (message above)"
    if [ "$with_cloud" -eq 1 ]; then
        "$venv/bin/python" -c 'import sys; from cloud_sync.agent import load_agent_config; load_agent_config(sys.argv[1])' \
            "$etc_dir/cloud_sync.yaml" || die "$etc_dir/cloud_sync.yaml does not validate (message above)"
    fi
fi

run systemctl daemon-reload
if [ "$start_now" -eq 1 ]; then
    run systemctl enable --now anc-device.service
else
    run systemctl enable anc-device.service
fi
if [ "$with_cloud" -eq 1 ]; then
    run systemctl enable anc-cloud-sync.service
    if [ "$start_now" -eq 1 ]; then
        if [ -f "$etc_dir/cloud_sync.yaml" ] && ! grep -q '^thing_name: *null' "$etc_dir/cloud_sync.yaml"; then
            run systemctl start anc-cloud-sync.service
        else
            say "anc-cloud-sync not started: provision the device first (docs/install.md)"
        fi
    fi
else
    say "anc-cloud-sync installed but not enabled (--no-cloud)"
fi

say "done. Next: anc-device devices; anc-device identify; systemctl start anc-device; journalctl -u anc-device"
