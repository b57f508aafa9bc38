"""Cold start of a serverless bundle in one fresh process: ``python -S coldstart_driver.py TASK MODULE FUNC EVENT DEPS``.

``edgecompress package`` copies this file beside the unpacked bundle and runs it under the function's limits, with
the bundle (and its dependencies) on PYTHONPATH only. It times the handler's dependencies' imports, its module scope
(tokenizer or image processor and InferenceSession) and one invocation with ``EVENT``, and prints one JSON line.
Peak memory is read with the bundle's own host facts (``edgecompress_facts``, compress/device/facts.py).
Standard library only, Python 3.8+.
"""

import json
import os
import sys
import time

T_START = time.time()


def main():
    task, module, func, event = sys.argv[1:5]
    # the bundle's memory reader (standard library only); the handler never imports it, so its time is not counted
    from edgecompress_facts import peak_rss_mb

    rss_start = peak_rss_mb()
    t0 = time.perf_counter()
    deps = [__import__(name) for name in json.loads(sys.argv[5])]  # the handler's dependencies
    t_imports = time.perf_counter() - t0
    t0 = time.perf_counter()
    mod = __import__(module)  # module scope: tokenizer + InferenceSession
    t_init = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = getattr(mod, func)(json.loads(event), None)
    t_first = time.perf_counter() - t0
    t_end = time.time()
    stdlib = set(getattr(sys, "stdlib_module_names", ())) | set(sys.builtin_module_names) | {"__main__", "__future__"}
    top = sorted({n.split(".")[0] for n, m in list(sys.modules.items()) if m is not None} - stdlib - {module})
    print(json.dumps({
        "t_start": T_START, "t_end": t_end,
        "imports_ms": t_imports * 1e3, "session_ms": t_init * 1e3, "first_inference_ms": t_first * 1e3,
        "peak_rss_mb": peak_rss_mb(), "rss_at_start_mb": rss_start,
        "threads_in_config": getattr(mod, "THREADS", None),
        "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "versions": {d.__name__: getattr(d, "__version__", None) for d in deps},
        "python": sys.version.split()[0],
        "loaded_top_level": top,
        "result_keys": sorted(result) if isinstance(result, dict) else None,
    }))


if __name__ == "__main__":
    main()
