"""What runs on the host, not on a device: this machine's CPU facts (cpu.py) and how latency and cold start are
timed on it (measure.py). The code shipped to a device lives in ``compress.device``."""
