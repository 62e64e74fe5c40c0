"""The machine: GPUs, bitsandbytes, disk and versions (doctor), and how processes end."""
