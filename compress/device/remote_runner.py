#!/usr/bin/env python3
"""edgecompress remote runner: measures an artifact on the device it is copied to.

A single standalone script. It needs Python 3.7+, numpy and the runtime (onnxruntime or openvino);
it never imports edgecompress, torch or transformers. ``edgecompress validate --remote`` copies it
to a fresh work directory on the device together with the model files, a ``job.json`` and the
input tensors (tokenized on the controlling machine) and runs:

    python3 remote_runner.py check --runtime onnxruntime   (piped to ``python3 - check`` with the device module)
    python3 remote_runner.py run WORKDIR --job-sha256 HEX
    python3 remote_runner.py probe WORKDIR --job-sha256 HEX --model artifact   (started by ``run``)

Every mode prints one line ``EDGECOMPRESS-RESULT {json}`` on stdout and exits with one of the
codes below, so the controller can tell a missing runtime from a wrong architecture from a
corrupted transfer. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import os
import platform
import socket
import subprocess
import sys
import time

MARKER = "EDGECOMPRESS-RESULT "
EXIT_OK = 0
EXIT_MISSING = 10  # numpy or the runtime (or the execution provider) is not installed
EXIT_ARCH = 11  # this device cannot run the artifact (architecture, runtime device)
EXIT_INTEGRITY = 12  # a shipped file is missing or does not match its sha256
EXIT_LOAD = 13  # the runtime could not load or run the model
EXIT_ERROR = 14  # anything else
EXIT_PYTHON = 15  # Python too old

# what to `pip install` on the device for a module / an ONNX Runtime execution provider
PIP = {"numpy": "numpy", "onnxruntime": "onnxruntime", "openvino": "openvino"}
EP_PIP = {
    "CUDAExecutionProvider": "onnxruntime-gpu",
    "TensorrtExecutionProvider": "onnxruntime-gpu",
    "OpenVINOExecutionProvider": "onnxruntime-openvino",
    "DmlExecutionProvider": "onnxruntime-directml",
    "QNNExecutionProvider": "onnxruntime-qnn",
}
# OpenVINO's CPU plugin: the Intel plugin (x86-64) and the ARM plugin (ARM64); wheels exist for these only
OPENVINO_ARCHES = ("x86_64", "amd64", "aarch64", "arm64")
# onnxruntime publishes wheels for these; elsewhere (armv7l, riscv64, ...) it must be built from source
ORT_WHEEL_ARCHES = ("x86_64", "amd64", "aarch64", "arm64")


class Fail(Exception):
    def __init__(self, code, kind, message, **extra):
        Exception.__init__(self, message)
        self.code = code
        self.payload = dict(ok=False, error=kind, message=message, **extra)


def emit(payload):
    sys.stdout.write(MARKER + json.dumps(payload) + "\n")
    sys.stdout.flush()


def say(msg):
    sys.stderr.write("[runner] " + msg + "\n")
    sys.stderr.flush()


# -- the device ------------------------------------------------------------------------------------

def device_facts():
    host = _facts()
    board = host.read_text("/proc/device-tree/model").strip("\x00 \n")
    facts = {
        "hostname": socket.gethostname(),
        "machine": platform.machine(),
        "system": platform.system(),
        "release": platform.release(),
        "cpu": host.cpu_model(board=board),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "python_executable": sys.executable,
    }
    if hasattr(os, "sched_getaffinity"):
        facts["cores_usable"] = len(os.sched_getaffinity(0))
    if board:
        facts["board"] = board
    product = host.read_text("/sys/class/dmi/id/product_name").strip()
    if product:
        facts["product"] = product
    # what a profile's hardware.identify regex is matched against (as edgecompress does on a local machine)
    parts = []
    for part in (board, product, facts["cpu"]):
        if part and part not in parts:
            parts.append(part)
    facts["model"] = "; ".join(parts) or facts["machine"]
    for line in host.read_text("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            facts["memory_mb"] = int(line.split()[1]) // 1024
    return facts


def _device():
    """The device code shared with the serverless handler and the runtime adapters (compress/device/shipped.py):
    edgecompress_device.py beside this file, or in sys.modules when ``check`` runs piped to ``python3 -`` before
    anything is sent (compress.validation.ssh.preflight_program); compress.device.shipped inside edgecompress."""
    try:
        import edgecompress_device as device
    except ImportError:
        from compress.device import shipped as device
    return device


def _facts():
    """The host facts shipped beside the device code (compress/device/facts.py): edgecompress_facts.py beside this
    file or in sys.modules, as :func:`_device`'s; compress.device.facts inside edgecompress."""
    try:
        import edgecompress_facts as facts
    except ImportError:
        from compress.device import facts
    return facts


def peak_rss_mb():
    return _facts().peak_rss_mb()


# -- runtime checks --------------------------------------------------------------------------------

def _import_failure(module, exc):
    machine = platform.machine().lower()
    pip = PIP.get(module, module)
    hint = "pip install " + pip
    if module == "onnxruntime" and machine not in ORT_WHEEL_ARCHES:
        hint += " (no official wheel for %s: build onnxruntime from source)" % machine
    return Fail(EXIT_MISSING, "missing_module",
                "%s is not importable by %s on this device (%s: %s)" % (module, sys.executable, type(exc).__name__, exc),
                module=module, pip=pip, install=hint)


def check_runtime(runtime, provider, fmt):
    """Import numpy and the runtime; check that this device can run ``fmt``. Returns facts about the runtime."""
    if sys.version_info < (3, 7):
        raise Fail(EXIT_PYTHON, "python_too_old", "Python %s is too old; the runner needs 3.7+" % platform.python_version())
    try:
        import numpy
    except Exception as e:  # noqa: BLE001 - ImportError, or a broken install (OSError on a shared library)
        raise _import_failure("numpy", e) from None
    machine = platform.machine().lower()
    info = {"runtime": runtime, "numpy": numpy.__version__}
    if fmt == "tensorrt":
        raise Fail(EXIT_ARCH, "not_portable", "a TensorRT engine runs only on the GPU model and TensorRT version "
                   "it was built with; build the engine on the device")
    if runtime == "onnxruntime":
        try:
            import onnxruntime as ort
        except Exception as e:  # noqa: BLE001
            raise _import_failure("onnxruntime", e) from None
        available = ort.get_available_providers()
        want = provider or "CPUExecutionProvider"
        if want not in available:
            pip = EP_PIP.get(want, "an onnxruntime build with " + want)
            raise Fail(EXIT_MISSING, "missing_provider",
                       "ONNX Runtime execution provider %s is not available on this device (available: %s)"
                       % (want, ", ".join(available)), module="onnxruntime", pip=pip, install="pip install " + pip)
        info.update(version=ort.__version__, providers=available)
    elif runtime == "openvino":
        try:
            import openvino as ov
        except Exception as e:  # noqa: BLE001
            if machine not in OPENVINO_ARCHES:
                raise Fail(EXIT_ARCH, "wrong_arch", "an OpenVINO IR needs OpenVINO's CPU plugin, which is released "
                           "for x86-64 and ARM64; this device is %s" % machine, arch=machine) from None
            raise _import_failure("openvino", e) from None
        want = (provider or "CPU").split(".")[0]
        devices = list(ov.Core().available_devices)
        if want not in [d.split(".")[0] for d in devices]:
            raise Fail(EXIT_ARCH, "device_missing", "OpenVINO device %s is not present on this device (available: %s)"
                       % (want, ", ".join(devices) or "none"), arch=machine)
        info.update(version=getattr(ov, "__version__", None) or ov.get_version(), devices=devices)
    else:
        raise Fail(EXIT_ARCH, "unsupported_runtime", "the runner supports onnxruntime and openvino, not %s" % runtime)
    return info


# -- models ----------------------------------------------------------------------------------------

class Model(object):
    """One loaded model, configured like edgecompress's runtime adapters (same threads, hints, options)."""

    def __init__(self, job, spec, workdir):
        import numpy as np

        self.np = np
        self.spec = spec
        self.runtime = job["runtime"]
        self.threads = job.get("threads")
        self.provider = job.get("provider")
        options = job.get("options") or {}
        path = os.path.join(workdir, spec["path"])
        if self.runtime == "onnxruntime":
            import onnxruntime as ort

            self.provider = self.provider or "CPUExecutionProvider"
            self.session = _device().ort_session(ort, path, self.threads, options.get("graph_optimization_level", "all"),
                                                 options.get("session_config"), self.provider)
            self.input_names = set(i.name for i in self.session.get_inputs())
            self.providers = self.session.get_providers()
            self.version = ort.__version__
        else:
            import openvino as ov

            core = ov.Core()
            self.provider = self.provider or "CPU"
            config = {"PERFORMANCE_HINT": "LATENCY"}
            if self.provider.startswith("CPU"):
                config["INFERENCE_PRECISION_HINT"] = "f32"
                if self.threads:
                    config["INFERENCE_NUM_THREADS"] = int(self.threads)
            config.update(dict((str(k), v) for k, v in options.items()))
            self.compiled = core.compile_model(path, self.provider, config)
            self.request = self.compiled.create_infer_request()
            self.input_names = set(p.get_any_name() for p in self.compiled.inputs)
            wanted = spec["output"]
            self.ov_output = next((o for o in self.compiled.outputs if wanted in o.get_names()),
                                  self.compiled.outputs[0])
            self.providers = [self.provider]
            self.version = getattr(ov, "__version__", None) or ov.get_version()

    def run(self, feed):
        np = self.np
        feed = dict((k, v) for k, v in feed.items() if k in self.input_names)
        if self.runtime == "onnxruntime":
            return self.session.run([self.spec["output"]], feed)[0].astype(np.float32, copy=False)
        self.request.infer(feed)
        return np.asarray(self.request.get_tensor(self.ov_output).data, dtype=np.float32).copy()

    def run_named(self, feed):
        """Every output of one call by name, as the graph returns it (a streaming model's state is fed back)."""
        feed = dict((k, v) for k, v in feed.items() if k in self.input_names)
        if self.runtime == "onnxruntime":
            names = [o.name for o in self.session.get_outputs()]
            return dict(zip(names, self.session.run(names, feed)))
        result = self.request.infer(feed, share_outputs=False)
        return dict((o.get_any_name(), self.np.array(result[o])) for o in self.compiled.outputs)

    def stream(self, values):
        """One sequence call by call, the state carried (compress/device/shipped.py: StreamCalls): the first output
        of every call, ``[calls, ...]``."""
        calls = _device().StreamCalls(self.spec["stream"], self.spec["inputs"])
        return calls.run(self.run_named, values)[self.spec["output"]].astype(self.np.float32)

    def predict(self, feed):
        """Run and post-process like edgecompress: pooled sentence embeddings for encoders, else logits."""
        out = self.run(feed)
        pooling = self.spec.get("pooling")
        if not pooling:
            return out
        return _device().pool(out, feed["attention_mask"], pooling, bool(self.spec.get("normalize")))

    def describe(self, job):
        return {
            "runtime": self.runtime, "version": self.version, "provider": self.provider, "threads": self.threads,
            "format": self.spec.get("format"), "precision": self.spec.get("precision"), "providers": self.providers,
        }


def feeds(data, prefix, names):
    return dict((n, data[prefix + n]) for n in names if (prefix + n) in data.files)


# -- files -----------------------------------------------------------------------------------------

def sha256_file(path, chunk=1 << 20):
    """The runner's own copy of edgecompress_device.sha256_file, on purpose: it verifies job.json and every shipped
    file, edgecompress_device.py among them, before any shipped code is imported."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def load_job(workdir, job_sha256):
    path = os.path.join(workdir, "job.json")
    if not os.path.isfile(path):
        raise Fail(EXIT_INTEGRITY, "integrity", "job.json did not arrive on the device", file="job.json")
    got = sha256_file(path)
    if got != job_sha256:
        raise Fail(EXIT_INTEGRITY, "integrity", "job.json arrived corrupted (sha256 %s..., expected %s...)"
                   % (got[:12], job_sha256[:12]), file="job.json")
    with open(path, "rb") as f:
        return json.loads(f.read().decode("utf-8"))


def verify_files(workdir, files):
    for rel, expected in sorted(files.items()):
        path = os.path.join(workdir, rel)
        if not os.path.isfile(path):
            raise Fail(EXIT_INTEGRITY, "integrity", "%s did not arrive on the device" % rel, file=rel)
        got = sha256_file(path)
        if got != expected:
            raise Fail(EXIT_INTEGRITY, "integrity", "%s arrived corrupted (sha256 %s..., expected %s...)"
                       % (rel, got[:12], expected[:12]), file=rel)


# -- modes -----------------------------------------------------------------------------------------

def cmd_check(args):
    info = check_runtime(args.runtime, args.provider, args.format)
    emit({"ok": True, "device": device_facts(), "runtime": info})


def cmd_run(args):
    t_start = time.perf_counter()
    workdir = os.path.abspath(args.workdir)
    try:  # own process group, so the controller's cleanup can stop us and the probe child together
        os.setpgid(0, 0)
    except OSError:
        pass
    pidfile = os.path.join(workdir, "runner.pid")
    with open(pidfile, "w") as f:
        f.write(str(os.getpgid(0)))
    try:
        _run(args, workdir, t_start)
    finally:
        try:
            os.remove(pidfile)
        except OSError:
            pass


def _run(args, workdir, t_start):
    job = load_job(workdir, args.job_sha256)
    runtime_info = check_runtime(job["runtime"], job.get("provider"), job["models"]["artifact"].get("format"))
    say("verifying %d files" % len(job["files"]))
    verify_files(workdir, job["files"])
    import numpy as np

    data = np.load(os.path.join(workdir, "inputs.npz"), allow_pickle=False)
    phases = {}
    models = {}
    t0 = time.perf_counter()
    try:
        for name, spec in job["models"].items():
            models[name] = Model(job, spec, workdir)
    except Exception as e:  # noqa: BLE001 - the runtime's own error, reported as such
        raise Fail(EXIT_LOAD, "load_failed", "%s could not load the %s model: %s: %s"
                   % (job["runtime"], name, type(e).__name__, str(e).strip().splitlines()[0] if str(e).strip() else "")) from None
    phases["load_s"] = time.perf_counter() - t0

    art = models["artifact"]
    names = job["models"]["artifact"]["input_names"]
    outputs = None
    if job.get("eval_batches"):
        say("predicting %d eval batches" % job["eval_batches"])
        t0 = time.perf_counter()
        outs = [art.predict(feeds(data, "eval.%d." % i, names)) for i in range(job["eval_batches"])]
        outputs = _device().concatenate_rows(outs)  # (a token classifier's per-token scores, NaN-padded)
        phases["predict_s"] = time.perf_counter() - t0

    stream_calls = None
    if job.get("stream_sequences"):  # a streaming model: each sequence call by call, the state carried
        say("streaming %d sequences" % job["stream_sequences"])
        t0 = time.perf_counter()
        outs = [art.stream(data["seq.%d" % i]) for i in range(job["stream_sequences"])]
        stream_calls = [len(o) for o in outs]
        outputs = np.concatenate(outs)
        phases["stream_s"] = time.perf_counter() - t0

    meas = job["measure"]
    runs = {}
    for name, model in models.items():
        feed = feeds(data, "lat.%s." % name, job["models"][name]["input_names"])
        runs[name] = (lambda m, f: (lambda: m.run(f)))(model, feed)
    say("timing %s" % " and ".join(runs))
    t0 = time.perf_counter()
    samples = _device().time_interleaved(runs, meas["warmup"], meas["min_runs"], meas["min_duration_s"],
                                         meas["max_runs"])
    phases["latency_s"] = time.perf_counter() - t0
    describe = art.describe(job)
    models.clear()
    art = None

    cold = None
    if job.get("cold_start"):
        say("cold start in a fresh process")
        cmd = [sys.executable, os.path.abspath(__file__), "probe", workdir, "--job-sha256", args.job_sha256,
               "--model", "artifact"]
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                              universal_newlines=True, timeout=600)
        wall = time.perf_counter() - t0
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARKER)]
        if proc.returncode != 0 or not lines:
            last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise Fail(EXIT_LOAD, "probe_failed", "cold-start probe failed on the device: " + last)
        cold = json.loads(lines[-1][len(MARKER):])
        cold.pop("ok", None)
        cold["process_wall_ms"] = round(wall * 1e3, 2)

    buf = io.BytesIO()
    if outputs is not None:
        np.save(buf, outputs, allow_pickle=False)
    emit({
        "ok": True,
        "device": device_facts(),
        "runtime": describe,
        "numpy": runtime_info.get("numpy"),
        "outputs_npy_b64": base64.b64encode(buf.getvalue()).decode("ascii") if outputs is not None else None,
        "stream_calls": stream_calls,
        "latency_s": samples,
        "cold_start": cold,
        "verified_files": len(job["files"]),
        "phases_s": dict((k, round(v, 3)) for k, v in phases.items()),
        "runner_s": round(time.perf_counter() - t_start, 3),
    })


def cmd_probe(args):
    """A fresh process: runtime import, session creation and first inference, and its peak RSS."""
    t_start = time.perf_counter()
    workdir = os.path.abspath(args.workdir)
    job = load_job(workdir, args.job_sha256)
    import numpy as np

    rss_before = peak_rss_mb()
    t0 = time.perf_counter()
    __import__(job["runtime"])
    t_import = time.perf_counter() - t0
    spec = job["models"][args.model]
    t0 = time.perf_counter()
    model = Model(job, spec, workdir)
    t_session = time.perf_counter() - t0
    data = np.load(os.path.join(workdir, "inputs.npz"), allow_pickle=False)
    feed = feeds(data, "lat.%s." % args.model, spec["input_names"])
    t0 = time.perf_counter()
    out = model.predict(feed)
    t_first = time.perf_counter() - t0
    if not np.isfinite(out).all():
        raise Fail(EXIT_LOAD, "non_finite", "the model produced non-finite outputs on the device")
    emit({"ok": True, **_facts().cold_start_record(job["runtime"], t_start, t_import, t_session, t_first, rss_before),
          "probe": "edgecompress remote runner: numpy + runtime, inputs tokenized on the controller"})


def main(argv=None):
    ap = argparse.ArgumentParser(prog="remote_runner.py", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="mode")
    c = sub.add_parser("check")
    c.add_argument("--runtime", required=True)
    c.add_argument("--provider")
    c.add_argument("--format")
    for mode in ("run", "probe"):
        p = sub.add_parser(mode)
        p.add_argument("workdir")
        p.add_argument("--job-sha256", required=True)
        if mode == "probe":
            p.add_argument("--model", default="artifact")
    args = ap.parse_args(argv)
    if args.mode is None:
        ap.error("a mode is required: check, run or probe")
    try:
        {"check": cmd_check, "run": cmd_run, "probe": cmd_probe}[args.mode](args)
    except Fail as f:
        emit(f.payload)
        sys.exit(f.code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - one JSON line, whatever happened
        emit({"ok": False, "error": "unexpected", "message": "%s: %s" % (type(e).__name__, e)})
        sys.exit(EXIT_ERROR)
    sys.exit(EXIT_OK)


if __name__ == "__main__":
    main()
