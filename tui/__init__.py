"""loradeck's terminal app and command line."""

import os

# Frames up to 120 a second (Textual's default is 60, read once when Textual is imported):
# the frame that shows a key waits for the screen's next tick after a long frame, at most
# 8 ms at 120 (16.7 ms at 60). Updates are coalesced at their source (a run's log every
# 0.5 s, a chat reply every 0.3 s), so the higher cap adds few frames.
os.environ.setdefault("TEXTUAL_FPS", "120")
