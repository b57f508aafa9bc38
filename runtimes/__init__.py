"""Inference runtime adapters (installed as ``compress.runtimes``): one module per runtime behind one interface."""
