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
