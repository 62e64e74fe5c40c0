"""The app by keys (Pilot), its screens' snapshots, its start and its responsiveness."""
