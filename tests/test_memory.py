"""Start-up-only library pages are handed back and the kernel keeps working without them."""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent("""
    import json
    import numpy as np
    from device.contract.config import load_config
    from device.core.engine import AncEngine
    from device.rig.memory import page_out_cold_libraries

    def rss_file_kib(name):
        total, current = 0, None
        for line in open("/proc/self/smaps"):
            parts = line.split()
            if "-" in parts[0] and len(parts[0]) > 8 and ":" not in parts[0]:
                current = parts[5] if len(parts) > 5 else ""
            elif parts[0] == "Rss:" and current and name in current:
                total += int(parts[1])
        return total

    def run(engine, seed):
        rng = np.random.default_rng(seed)
        out = np.zeros(32)
        outputs = []
        for _ in range(3000):
            reference = 0.1 * rng.standard_normal(32)
            engine.process(reference, 0.5 * reference, out)
            outputs.append(out.copy())
        return np.concatenate(outputs)

    cfg = load_config()
    secondary = np.zeros(cfg.controller.secondary_path_taps)
    secondary[72] = 0.5
    before_engine = AncEngine.from_config(cfg, secondary, None)
    expected = run(before_engine, 1)
    llvm_before = rss_file_kib("libllvmlite")
    advised = page_out_cold_libraries()
    llvm_after = rss_file_kib("libllvmlite")
    after_engine = AncEngine.from_config(cfg, secondary, None)
    got = run(after_engine, 1)
    import llvmlite
    print(json.dumps({"llvmlite": llvmlite.__file__, "advised": advised, "llvm_before": llvm_before, "llvm_after": llvm_after,
                      "same_output": bool(np.array_equal(expected, got))}))
""")


def _private_llvmlite(tmp_path):
    """A copy of llvmlite that only the child maps: the kernel pages out a library's pages only
    where no other process maps them, and this test's own process has loaded LLVM already
    (on the device the runtime is the only process that does)."""
    import llvmlite

    source = Path(llvmlite.__file__).parent
    copy = tmp_path / "site" / "llvmlite"
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns("tests", "__pycache__"))
    return copy.parent


def test_cold_library_pages_are_dropped_and_the_kernel_runs_on(tmp_path):
    site = _private_llvmlite(tmp_path)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]))
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    import json

    report = json.loads(result.stdout.strip().splitlines()[-1])
    if not report["advised"]:
        pytest.skip("this kernel has no MADV_PAGEOUT (Linux < 5.4): nothing to hand back")
    assert report["llvmlite"].startswith(str(site)), "the child must load the private copy"
    assert any("libllvmlite" in name for name in report["advised"])
    assert report["llvm_after"] < report["llvm_before"] / 2
    assert report["same_output"], "the kernel computed something else after the page-out"


def test_the_plant_emulator_does_not_load_numba():
    """The JACK plant emulator runs beside the runtime on the bench; if it mapped numba's LLVM
    too, the runtime could not hand those pages back (a page another process maps stays), and
    the bench would measure a runtime heavier than it is on plain ALSA."""
    probe = "import sys, simulator.jack_plant; print(sorted(m for m in ('numba', 'llvmlite') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("compose", [
    "compose_session(cfg, secondary, None, sample_rate=48000, block_size=32, classifier=(None, None))",
    "compose_ears_session({'left': cfg, 'right': cfg}, [secondary, secondary], [None, None], "
    "sample_rate=48000, block_size=32, classifier=(None, None))",
], ids=["one ear", "two ears"])
def test_composing_a_session_compiles_the_worker_loops_before_the_stream_opens(compose):
    """The runtime hands numba's pages back just before the stream opens; a worker loop first
    compiled (or loaded from the cache) on the first classification window, seconds later,
    would bring LLVM back for good."""
    probe = textwrap.dedent("""
        import numpy as np
        from device.contract.config import load_config
        from device.core.session import compose_session
        from device.core.ears import compose_ears_session
        from device.core.dsp import streaming, window_summary

        cfg = load_config()
        secondary = np.zeros(cfg.controller.secondary_path_taps)
        secondary[72] = 0.5
        COMPOSE
        # What the worker calls from Python (the helpers they call are compiled into them).
        loops = [streaming.polyphase_outputs, streaming.speaker_at_error, window_summary.frame_summaries,
                 window_summary.modulation_summary, window_summary.windowed_frames,
                 window_summary.power_and_mel]
        print(sorted(loop.__name__ for loop in loops if not loop.signatures))
    """).replace("COMPOSE", compose)
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
