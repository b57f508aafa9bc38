"""The code that ships to a device and runs there without edgecompress: shipped.py (feeds, pooling, session options;
shipped as edgecompress_device.py), facts.py (CPU name, hashes, peak memory; shipped as edgecompress_facts.py),
remote_runner.py (the SSH runner), coldstart_driver.py (run beside a serverless bundle) and bundle_template/.
It imports only numpy, the runtime and the standard library."""
