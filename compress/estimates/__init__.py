"""Latency estimates for devices edgecompress cannot measure on: graph cost and rooflines."""
