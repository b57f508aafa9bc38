"""On-device code and host facts: what ships to a device, the remote runner, probes, measurement."""
