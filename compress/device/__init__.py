"""The code that ships to a device and runs there without edgecompress: shipped.py (pooling, session options, timing,
streams; shipped as edgecompress_device.py), feeds.py (feeds from the input description; shipped as
edgecompress_feeds.py), facts.py (CPU name, hashes, peak memory; shipped as edgecompress_facts.py),
remote_runner.py (the SSH runner), coldstart_driver.py (run beside a serverless bundle) and bundle_template/.
It imports only numpy, the runtime and the standard library."""
