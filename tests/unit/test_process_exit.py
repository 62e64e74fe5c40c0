"""A worker process ends at once after its work, keeping everything it wrote."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

SCRIPT = """
import atexit, logging, sys
from loradeck.engine.system.process_exit import exit_now

log = logging.getLogger("worker")
log.addHandler(logging.FileHandler(sys.argv[1]))
log.warning("a logged line")
extra = open(sys.argv[2], "w", buffering=8192)  # like the chat worker's reply stream
extra.write("a reply line")
sys.stdout.write("buffered, with no newline")
sys.stderr.write("to stderr")
atexit.register(lambda: open(sys.argv[3], "w").close())  # the teardown: never reached
exit_now(3, extra)
"""


def test_exit_now_keeps_buffered_output_and_skips_the_teardown(tmp_path):
    out, log, extra = tmp_path / "out.txt", tmp_path / "log.txt", tmp_path / "extra.txt"
    torn = tmp_path / "teardown-ran"
    with out.open("w") as f:
        r = subprocess.run([sys.executable, "-c", SCRIPT, str(log), str(extra), str(torn)],
                           cwd=ROOT, stdout=f, stderr=subprocess.PIPE, text=True, timeout=60)
    assert not torn.exists()  # the exit hook did not run
    assert r.returncode == 3
    assert out.read_text() == "buffered, with no newline"
    assert r.stderr == "to stderr"
    assert log.read_text() == "a logged line\n"
    assert extra.read_text() == "a reply line"


def test_the_bitsandbytes_kernel_warning_stays_out_of_output(tmp_path):
    """bitsandbytes' "Failed to load CPU gemm_4bit_forward from kernels-community" line (an
    optional kernel; its own CPU code runs instead) is dropped once loradeck's engine is
    imported; its other warnings pass, and LORADECK_DEBUG keeps it."""
    import os
    import subprocess
    import sys

    script = tmp_path / "warn.py"
    script.write_text(
        "import logging, loradeck.engine\n"
        "log = logging.getLogger('bitsandbytes.backends.cpu.ops')\n"
        "log.warning('Failed to load CPU gemm_4bit_forward from kernels-community: %s.', 'x')\n"
        "log.warning('another bitsandbytes warning')\n")
    env = {k: v for k, v in os.environ.items() if k != "LORADECK_DEBUG"}
    quiet = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                           text=True, timeout=60)
    assert "kernels-community" not in quiet.stderr
    assert "another bitsandbytes warning" in quiet.stderr
    debug = subprocess.run([sys.executable, str(script)], env={**env, "LORADECK_DEBUG": "1"},
                           capture_output=True, text=True, timeout=60)
    assert "kernels-community" in debug.stderr
