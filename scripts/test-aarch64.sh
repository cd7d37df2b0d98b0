#!/usr/bin/env bash
# Runs the tests that do not need real time on arm64 Debian 12 (bookworm, Python 3.11), the
# base of 64-bit Raspberry Pi OS, under qemu user emulation, then runs `anc-device --simulate`
# on the bundled scenes there and natively and compares the figures.
#
# 1. Builds an arm64 root with mmdebstrap and a virtual environment in it with the project's
#    dependencies, wheels only (`--only-binary=:all:`: a dependency without an aarch64 wheel
#    fails the run instead of building from source). Kept in $ANC_AARCH64_CACHE (default
#    /var/cache/anc-device/aarch64): the base root keyed on its apt recipe only; the venv's
#    packages resolved for aarch64 and unpacked by the host's native pip (nothing of pip runs
#    under emulation), again when the dependency list in pyproject.toml changes; the aarch64
#    wheels beside the root, downloaded once.
# 2. Copies the checkout into the root, installs the project itself (editable, --no-deps) and
#    runs the emulated tests (list and what is left out: EMULATED_TESTS and DESELECTED below).
# 3. Beside those tests, runs every bundled scene through `anc-device --simulate --json` in
#    the root and in the native .venv (scripts/setup.sh) and compares the summaries: dB
#    figures within $ANC_AARCH64_TOLERANCE_DB (default 0.1 dB), speed figures excluded.
#
# The whole run, a cold root build included, is bounded by $ANC_AARCH64_TIME_LIMIT seconds
# (default 1500): past it the run stops, cleans up and fails with one line.
# Needs root (chroot, mounts) and installs qemu-user-static, binfmt-support and mmdebstrap
# with apt-get if missing. Safe to run again; every mount it makes is undone on exit, also
# when interrupted. Exit status: 0 if everything passed, 1 otherwise. Details: docs/install.md.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

cache=${ANC_AARCH64_CACHE:-/var/cache/anc-device/aarch64}
tolerance_db=${ANC_AARCH64_TOLERANCE_DB:-0.1}
# Wall-clock limit of the whole run, seconds, cold root build included: CI's whole budget is
# 45 minutes, of which the native suite takes about 8.
time_limit=${ANC_AARCH64_TIME_LIMIT:-1500}

# The whole run under `timeout`: past the limit the script gets SIGTERM, its trap ends what
# runs in the root and undoes the mounts, and the run fails with one line instead of hanging.
if [ -z "${ANC_AARCH64_UNDER_TIME_LIMIT:-}" ]; then
    rc=0
    ANC_AARCH64_UNDER_TIME_LIMIT=1 timeout -k 60 "$time_limit" "$repo/scripts/$(basename "$0")" "$@" || rc=$?
    [ "$rc" -ne 124 ] || printf 'aarch64: FAILED: the run took over %s s (ANC_AARCH64_TIME_LIMIT)\n' "$time_limit" >&2
    exit "$rc"
fi

# -- the root's recipe (part of the cache key) -------------------------------------------------
suite=bookworm
# python3-venv brings pip's wheel for the venv; the system pip is not needed.
# mosquitto: tests/cloud start a real TLS broker of their own.
root_packages=python3,python3-venv,libportaudio2,libsndfile1,ca-certificates,mosquitto
# The extras the emulated tests import: plots (test_cli's report.png), train (ONNX export
# against scikit-learn), cloud and test. Not hil: tests/hil is not run here.
extras=cloud,plots,test,train
venv=/opt/anc-device/venv
# The Raspberry Pi 4's core. qemu's default CPU ("max") has instructions no Pi 4 has (SVE,
# LSE atomics...), which numba's LLVM and OpenBLAS would otherwise use.
qemu_cpu=cortex-a72

# What runs under emulation, chosen to keep a cold run (root build included) inside CI's
# budget: the tests whose result could depend on the architecture, i.e. on aarch64 builds of
# numba/LLVM, NumPy/OpenBLAS, SciPy, onnxruntime, scikit-learn, SQLite, OpenSSL and the cloud
# libraries (awscrt, cryptography, paho-mqtt against an aarch64 mosquitto, boto3). Everything
# else runs in the native suite only, because it is the same Python on every architecture
# or measures timing, which emulation (about 13 times slower) does not reproduce:
#   tests/hil: JACK in real time.
#   tests/test_runtime.py, tests/test_rig.py: threads, queues, fake sound devices and timing
#     percentiles; the numerics they touch are the kernel's and the simulator's, run here.
#   tests/test_systemd.py: systemd-analyze against the unit files and install.sh (text and
#     shell; systemd is not in the root).
#   tests/test_cli.py: argument handling and output files, each test a fresh `anc-device`
#     process (2-6 s native each); the CLI's --simulate --json path runs here on every
#     bundled scene in the comparison with x86_64.
#   tests/cloud/test_agent.py, test_faults.py, test_jobs.py, test_delivery_properties.py,
#     test_control_channel.py, test_recordings.py, test_cloudformation.py: the agent's
#     logic, fault injection, process kills and restarts, JSON files and template linting;
#     the libraries under them are exercised here by the MQTT, provisioning, Kinesis and
#     spool tests.
#   the layering, mutation and other whole-tree checks: text.
EMULATED_TESTS=(
    tests/test_kernel.py
    tests/test_config.py
    tests/test_simulator.py
    tests/test_classifier.py
    tests/test_features.py
    tests/cloud/test_mqtt.py
    tests/cloud/test_provisioning.py
    tests/cloud/test_kinesis.py
    tests/cloud/test_spool.py
    tests/cloud/test_records.py
)
# The slowest of those under emulation, left to the native suite. Each is either covered here
# by something else or checks nothing that depends on the architecture. Native seconds on
# the 2-core CI machine.
DESELECTED=(
    # librosa's own numba JIT compiles for minutes under emulation (52 s native); our MFCC
    # and mel filterbank are still checked on aarch64 through the classifier tests and the
    # --simulate comparison of the detected classes.
    tests/test_features.py::test_mfcc_matches_librosa
    tests/test_features.py::test_mel_filterbank_matches_librosa
    # Memory growth of the decimator over many blocks (4 s native): Python allocation, not
    # arithmetic; the decimator's output is checked here against resample_poly.
    tests/test_features.py::test_decimator_does_not_grow
    # Compiles every kernel again into a fresh cache in a subprocess (22 s native); the other
    # kernel tests compile and cache them on aarch64 already.
    tests/test_kernel.py::test_kernels_compile_into_numba_cache_dir
    # The tonal headphone scene (14 s native) is what the --simulate comparison runs, figure
    # for figure against x86_64.
    tests/test_simulator.py::test_tonal_scene_on_headphone_reaches_25_db_within_6_db_of_the_optimum
    # Broadband noise in the duct (11 s native): the kernel on the duct plant is checked here
    # against the NumPy reference in closed loop (test_kernel.py).
    tests/test_simulator.py::test_broadband_noise_in_the_causal_duct_is_cancelled
    # Whole closed-loop runs of 10-30 s of scene each (2-12 s native, 4-5 minutes each here on
    # a busy machine): the same engine, plant and kernels run figure for figure against x86_64
    # in the --simulate comparison of the three bundled scenes; what these add is behaviour
    # (convergence time, the watchdog on a sign flip, the causality verdict, every preset
    # against every scene) that is Python over those numerics, the same on every architecture.
    tests/test_simulator.py::test_long_duct_filter_reaches_its_optimum_quickly
    tests/test_simulator.py::test_watchdog_catches_a_secondary_path_sign_flip_and_output_stays_under_the_ceiling
    tests/test_simulator.py::test_broadband_noise_on_headphone_is_reported_as_non_causal
    tests/test_classifier.py::test_no_preset_trips_the_watchdog_on_any_scene
    # Training twice for bit-identical models (8 s native): determinism on one machine; the
    # ONNX export is checked against scikit-learn on aarch64 by test_onnx_agrees_with_sklearn.
    tests/test_classifier.py::test_training_is_deterministic_and_its_model_is_accepted
    # The broker killed and restarted mid-stream (3 s native) and a claim that times out:
    # process handling and timeouts; delivery over TLS is tested here by the other MQTT tests.
    tests/cloud/test_mqtt.py::test_broker_killed_and_restarted_mid_stream_delivers_every_record
    tests/cloud/test_provisioning.py::test_timeout_and_missing_claim_certificate
    # Config errors through a fresh `anc-device` process (4 s native): argument handling; the
    # config loader's errors are checked here in-process by the other config tests.
    tests/test_config.py::test_cli_reports_config_errors_in_one_line_with_exit_2
)

build_root() { # DIR: an arm64 Debian root with the packages above
    mmdebstrap --quiet --arch=arm64 --variant=apt --include="$root_packages" "$suite" "$1" "${mirrors[@]}"
}

prepare_root() { # DIR: what the root needs besides its packages to run the venv and the tests
    local dir=$1
    mkdir -p "$dir/opt/anc-device" "$dir/root/.cache/pip"
    write_cpuinfo > "$dir/opt/anc-device/cpuinfo"
    if [ -n "$interpreter" ]; then
        mkdir -p "$dir$(dirname "$interpreter")"
        cp -L "$interpreter" "$dir$interpreter"
    fi
    mount_root "$dir"
    trust_host_certificates "$dir"
    release "$dir"
}

# The venv in the root DIR, brought up to date with the dependency list. The host's native pip
# resolves the list for aarch64 (--platform: every manylinux tag bookworm's glibc 2.36 runs;
# wheels only, so a dependency without an aarch64 wheel fails the run instead of building from
# source) and unpacks the wheels straight into the venv's site-packages. Nothing of this runs
# under emulation, where pip takes minutes, and no TLS runs there either (the package index
# resets connections whose handshake is as slow as an emulated one on a busy machine). The
# wheels are kept in $cache/wheels, so each is fetched once. When the list changes the
# site-packages are installed again from those wheels (seconds); the root is not rebuilt.
# Environment markers are evaluated by the host's pip for the host: `pip check` in the root
# then checks the result on aarch64.
update_dependencies() { # DIR
    local dir=$1 wanted site platforms=(--platform manylinux2014_aarch64) glibc
    wanted=$(dependency_list | sha256sum | cut -c1-16)
    if [ -x "$dir$venv/bin/python" ] && [ "$(cat "$dir/opt/anc-device/requirements.sha" 2>/dev/null)" = "$wanted" ]; then
        say "the venv is up to date with the dependency list"
        return 0
    fi
    [ -x "$dir$venv/bin/python" ] || in_root "$dir" python3 -m venv --without-pip "$venv"
    site=$dir$venv/lib/python$(in_root "$dir" "$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')/site-packages
    [ -d "$site" ] || die "no site-packages at $site in the root's venv"
    for glibc in $(seq 17 36); do platforms+=(--platform "manylinux_2_${glibc}_aarch64"); done
    dependency_list > "$workdir/requirements.txt"
    say "installing the aarch64 wheels of the dependency list into the venv (native pip)"
    rm -f "$dir/opt/anc-device/requirements.sha"
    find "$site" -mindepth 1 -maxdepth 1 -exec rm -rf -- {} +
    host_pip download -q --retries 10 --only-binary=:all: "${platforms[@]}" --python-version 3.11 \
        --implementation cp --abi cp311 --abi abi3 --abi none --dest "$cache/wheels" \
        pip "setuptools>=77" wheel -r "$workdir/requirements.txt"
    host_pip install -q --no-index --find-links "$cache/wheels" --no-compile --only-binary=:all: \
        "${platforms[@]}" --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none \
        --target "$site" pip "setuptools>=77" wheel -r "$workdir/requirements.txt"
    # Scripts --target wrote name the host's interpreter; the root runs its tools as modules.
    rm -rf -- "$site/bin"
    in_root "$dir" "$venv/bin/python" -m pip freeze > "$dir/opt/anc-device/freeze.txt"
    printf '%s\n' "$wanted" > "$dir/opt/anc-device/requirements.sha"
}

# The host's pip (from the native .venv) with none of the host's pip configuration.
host_pip() {
    env -i HOME="$HOME" PATH=/usr/bin:/bin PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1 \
        PIP_NO_INPUT=1 PIP_ROOT_USER_ACTION=ignore "$repo/.venv/bin/python" -m pip "$@"
}

# -- helpers -----------------------------------------------------------------------------------
say() { printf 'aarch64: %s\n' "$*"; }
die() { printf 'aarch64: error: %s\n' "$*" >&2; exit 1; }

# The dependencies of the project and of the chosen extras, one requirement a line, from
# pyproject.toml (self-references like "anc-device[plots]" expanded).
dependency_list() {
    python3 - "$extras" <<'EOF'
import sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
name, optional = project["name"], project.get("optional-dependencies", {})
out, seen = set(project["dependencies"]), set()
todo = [e for e in sys.argv[1].split(",") if e]
while todo:
    extra = todo.pop()
    if extra in seen:
        continue
    seen.add(extra)
    for req in optional[extra]:
        if req.replace(" ", "").startswith(name + "["):
            todo += req.split("[", 1)[1].rstrip("]").split(",")
        else:
            out.add(req)
print("\n".join(sorted(out)))
EOF
}

# The synthetic /proc/cpuinfo of a Raspberry Pi 4. qemu 7.2 shows the guest the host's x86
# /proc/cpuinfo, on which onnxruntime's and LLVM's aarch64 CPU detection fail.
write_cpuinfo() {
    local n
    for n in 0 1 2 3; do
        printf 'processor\t: %s\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n' "$n"
        printf 'CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n'
    done
    printf 'Hardware\t: BCM2835\nModel\t\t: Raspberry Pi 4 Model B (emulated)\n'
}

# pip in the root must trust what the host trusts (a TLS-inspecting proxy's CA, for one).
trust_host_certificates() {
    local dir=$1
    if [ -d /usr/local/share/ca-certificates ]; then
        mkdir -p "$dir/usr/local/share/ca-certificates"
        cp -a /usr/local/share/ca-certificates/. "$dir/usr/local/share/ca-certificates/"
    fi
    in_root "$dir" update-ca-certificates > "$dir/opt/anc-device/ca-certificates.log" 2>&1 \
        || { cat "$dir/opt/anc-device/ca-certificates.log" >&2; die "update-ca-certificates failed in the root"; }
}

is_mounted() { mountpoint -q "$1" 2>/dev/null || findmnt -rn --mountpoint "$1" >/dev/null 2>&1; }

# Every mount point under DIR, deepest and most recent first.
mounts_under() {
    findmnt -rn -o TARGET | tac | while IFS= read -r target; do
        case "$target" in "$1"/*) printf '%s\n' "$target" ;; esac
    done
}

# Processes whose root directory is under DIR: what this script started in a root.
processes_in() {
    local p r
    for p in /proc/[0-9]*; do
        r=$(readlink "$p/root" 2>/dev/null) || continue
        case "$r" in "$1"|"$1"/*) printf '%s\n' "${p#/proc/}" ;; esac
    done
}

# Ends what runs in the roots under DIR, then undoes every mount there, in reverse order.
release() {
    local dir=$1 pids target i
    pids=$(processes_in "$dir")
    if [ -n "$pids" ]; then
        # shellcheck disable=SC2086
        kill -TERM $pids 2>/dev/null || true
        for i in 1 2 3 4 5 6 7 8 9 10; do
            pids=$(processes_in "$dir")
            [ -n "$pids" ] || break
            sleep 0.5
        done
        # shellcheck disable=SC2086
        [ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
    fi
    for i in 1 2 3; do
        mounts_under "$dir" | while IFS= read -r target; do
            is_mounted "$target" || continue
            umount "$target" 2>/dev/null || { [ "$i" -lt 3 ] || umount -l "$target" 2>/dev/null || true; }
        done
        [ -n "$(mounts_under "$dir")" ] || return 0
        sleep 1
    done
    [ -z "$(mounts_under "$dir")" ] || { printf 'aarch64: error: still mounted under %s:\n' "$dir" >&2; mounts_under "$dir" >&2; return 1; }
}

# rm -rf, but never through a mount: refuses if anything under DIR is still mounted.
remove_tree() {
    local dir=$1
    [ -e "$dir" ] || return 0
    release "$dir" || die "not removing $dir: something is still mounted under it"
    [ -z "$(mounts_under "$dir")" ] || die "not removing $dir: something is still mounted under it"
    rm -rf --one-file-system -- "$dir"
}

mount_root() { # DIR
    local dir=$1
    mount --bind /proc "$dir/proc"
    mount --bind "$dir/opt/anc-device/cpuinfo" "$dir/proc/cpuinfo"
    mount --bind /sys "$dir/sys"
    mount -o remount,bind,ro "$dir/sys"
    mount --bind /dev "$dir/dev"
    mount --bind /dev/pts "$dir/dev/pts"
    mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$dir/dev/shm"
    mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$dir/tmp"
    mkdir -p "$dir/root/.cache/pip" "$dir/opt/anc-device/wheels"
    mount --bind "$cache/pip" "$dir/root/.cache/pip"
    mount --bind "$cache/wheels" "$dir/opt/anc-device/wheels"
}

# Runs a command in the root DIR with a clean environment: nothing of the host's pip
# configuration, indexes or PIP_* variables. In the background and waited for, so that a
# signal reaches the trap at once instead of after the command.
in_root() {
    local dir=$1
    shift
    env -i HOME=/root LANG=C.UTF-8 TERM="${TERM:-dumb}" \
        PATH="$venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
        PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 \
        PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_ROOT_USER_ACTION=ignore \
        QEMU_CPU="$qemu_cpu" NUMBA_CACHE_DIR=/var/cache/anc-device/numba \
        chroot "$dir" "$@" &
    wait $!
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [ -z "${scenes_pid:-}" ] || kill -TERM "$scenes_pid" 2>/dev/null || true
    if [ -d "$cache" ]; then
        release "$cache" || rc=1
    fi
    [ -z "${workdir:-}" ] || rm -rf -- "$workdir"
    exit "$rc"
}

# -- the host: emulator, binfmt, mmdebstrap ----------------------------------------------------
[ "$(id -u)" -eq 0 ] || die "needs root (mmdebstrap, chroot, mounts): sudo $0"
missing=()
for package in qemu-user-static binfmt-support mmdebstrap; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
binfmt=/proc/sys/fs/binfmt_misc
[ -e "$binfmt/status" ] || mount -t binfmt_misc binfmt_misc "$binfmt" \
    || die "binfmt_misc is not mounted at $binfmt and cannot be"
[ -e "$binfmt/qemu-aarch64" ] || update-binfmts --enable qemu-aarch64 >/dev/null \
    || die "cannot register qemu-aarch64 with binfmt_misc (update-binfmts --enable qemu-aarch64)"
grep -qx enabled "$binfmt/qemu-aarch64" || die "$binfmt/qemu-aarch64 is registered but disabled"
interpreter=$(awk '$1 == "interpreter" {print $2}' "$binfmt/qemu-aarch64")
# With F the kernel opened the emulator at registration; otherwise it must be in the root.
grep -q '^flags:.*F' "$binfmt/qemu-aarch64" && interpreter=""

mirrors=()
for sources in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -f "$sources" ] && grep -Eq '^[^#]*(debian\.org|/debian)' "$sources" && mirrors+=("$sources")
done
[ ${#mirrors[@]} -gt 0 ] || mirrors=(http://deb.debian.org/debian)

# The native venv: its pip downloads the wheels, its anc-device gives the x86_64 figures.
scripts/setup.sh

# -- the cached root ---------------------------------------------------------------------------
mkdir -p "$cache"
cache=$(realpath "$cache")
exec 9>"$cache/.lock"
flock -w 3600 9 || die "another run holds $cache/.lock"
workdir=$(mktemp -d)
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
release "$cache" || die "cannot undo the mounts a previous run left under $cache"

# The base root is keyed on its apt recipe only; the venv in it follows the dependency list
# (update_dependencies), and pip's cache survives a rebuild of the root.
key=$({
    printf '%s\n' "$suite" "$root_packages"
    declare -f build_root prepare_root trust_host_certificates write_cpuinfo
} | sha256sum | cut -c1-16)
root=$cache/base-$key
mkdir -p "$cache/pip" "$cache/wheels"

for old in "$cache"/base-* "$cache"/build-* "$cache"/root-*; do
    [ -e "$old" ] && [ "$old" != "$root" ] || continue
    say "removing the outdated root $old"
    remove_tree "$old"
done

started=$SECONDS
if [ ! -d "$root" ]; then
    build=$cache/build-$key
    say "building the arm64 $suite root in $root (a few minutes)"
    build_root "$build"
    prepare_root "$build"
    mv "$build" "$root"
    say "base root ready in $((SECONDS - started)) s"
else
    say "using the cached base root $root"
fi
mount_root "$root"
update_dependencies "$root"
say "root and venv ready in $((SECONDS - started)) s: $(du -sh --one-file-system "$root" | cut -f1), pip cache $(du -sh "$cache/pip" | cut -f1)"

# -- the project in the root -------------------------------------------------------------------
remove_tree "$root/src"
mkdir -p "$root/src"
tar -C "$repo" --exclude=./.git --exclude=./.venv --exclude=./.cache --exclude=./out \
    --exclude=./.pytest_cache --exclude=./.state --exclude='__pycache__' --exclude='*.egg-info' \
    -cf - . | tar -C "$root/src" -xf -
in_root "$root" "$venv/bin/python" -m pip install -q --no-deps --no-build-isolation -e /src \
    > "$workdir/install.log" 2>&1 || { cat "$workdir/install.log" >&2; die "installing the project in the root failed"; }
# The project's own requirements are met by what the cached venv holds.
in_root "$root" "$venv/bin/python" -m pip check >&2 || die "pip check failed in the root"
say "the project installed in the root in $((SECONDS - started)) s since the start of the root's set-up"
say "$(in_root "$root" "$venv/bin/python" -c 'import platform, numpy, numba, onnxruntime; print(platform.machine(), "Python", platform.python_version(), "numpy", numpy.__version__, "numba", numba.__version__, "onnxruntime", onnxruntime.__version__)')"

failed=0

# -- the same figures on both architectures ----------------------------------------------------
# Every bundled scene through `anc-device --simulate --json` natively and in the root; the
# summaries compared by compare-summaries.py. Runs beside the emulated tests: qemu runs a
# guest thread on one host core, so on two cores the two take the time of the longer.
compare_scenes() {
    local scene name started mismatched=0
    for scene in simulator/scenes/*.wav; do
        name=$(basename "$scene" .wav)
        started=$SECONDS
        if ! .venv/bin/anc-device --simulate "$scene" --json > "$workdir/$name.x86_64.json" 2> "$workdir/$name.x86_64.err"; then
            say "FAILED: native anc-device --simulate $scene: $(tail -n 1 "$workdir/$name.x86_64.err")"
            mismatched=1
            continue
        fi
        if ! in_root "$root" env -C /src anc-device --simulate "$scene" --json > "$workdir/$name.aarch64.json" 2> "$workdir/$name.aarch64.err"; then
            say "FAILED: aarch64 anc-device --simulate $scene: $(tail -n 1 "$workdir/$name.aarch64.err")"
            mismatched=1
            continue
        fi
        if python3 scripts/compare-summaries.py --tolerance-db "$tolerance_db" "$scene" \
                "$workdir/$name.x86_64.json" "$workdir/$name.aarch64.json"; then
            say "$scene: the aarch64 figures agree with x86_64 (dB within $tolerance_db; $((SECONDS - started)) s)"
        else
            mismatched=1
        fi
    done
    [ "$mismatched" -eq 0 ] || { say "FAILED: anc-device --simulate differs between aarch64 and x86_64"; return 1; }
}

export NUMBA_CACHE_DIR="${NUMBA_CACHE_DIR:-$repo/.cache/numba}"
scenes_started=$SECONDS
compare_scenes > "$workdir/scenes.log" 2>&1 &
scenes_pid=$!

# -- the emulated tests ------------------------------------------------------------------------
deselect=()
for test in "${DESELECTED[@]}"; do deselect+=(--deselect "$test"); done
say "running ${EMULATED_TESTS[*]} under emulation (and the scenes beside them)"
started=$SECONDS
# The per-test hang limit (pyproject.toml: 300 s) times four: the first test to touch a kernel
# compiles it, which takes minutes under emulation.
in_root "$root" env -C /src "$venv/bin/python" -m pytest -q -p no:cacheprovider --timeout 1200 \
    --durations=25 "${deselect[@]}" "${EMULATED_TESTS[@]}" || failed=1
say "emulated tests took $((SECONDS - started)) s"

wait "$scenes_pid" || failed=1
scenes_pid=
cat "$workdir/scenes.log"
say "the scene comparison took $((SECONDS - scenes_started)) s"

release "$root" || failed=1
say "the whole run took $SECONDS s"
if [ "$failed" -ne 0 ]; then
    say "FAILED"
    exit 1
fi
say "passed: the emulated tests, and --simulate agrees on $(ls simulator/scenes/*.wav | wc -l) scenes"
