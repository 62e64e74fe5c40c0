"""Engine and pure view code: no processes of their own beyond a quick CLI call."""
