"""Built-in device profiles (YAML package data, installed as ``compress.builtin_profiles``)."""
