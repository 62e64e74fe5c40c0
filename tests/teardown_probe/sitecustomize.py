"""Put on PYTHONPATH by ``conftest.teardown_env``: each Python process started with
LORADECK_TEST_TEARDOWN_DIR set leaves a file named by its pid there when the interpreter's
teardown (atexit) runs, so a test sees whether a process ended through ``exit_now``."""

import atexit
import os

_dir = os.environ.get("LORADECK_TEST_TEARDOWN_DIR")
if _dir:
    atexit.register(lambda: open(os.path.join(_dir, str(os.getpid())), "w").close())
