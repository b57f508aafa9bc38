#!/usr/bin/env python
"""A real Arm board, emulated (issue 56): Debian arm64 under qemu-system-aarch64, reached over SSH like any board.

The script builds the board once under ``--work`` (outside the repository; default /work/arm64), boots it, and
validates two INT8 artifacts there with ``edgecompress validate --remote`` (the shipped runner, ONNX Runtime's aarch64
wheel and its Arm INT8 kernels, run for real) and on this x86 host, then feeds both CPUs the same input tensors and
compares their logits: do Arm's INT8 kernels give the same predictions as x86's?

Building the board (each step skipped when its output exists; root, Debian's packages:
``apt-get install qemu-system-arm qemu-user-static debootstrap``):

1. ``debootstrap --arch=arm64`` bookworm into WORK/rootfs (its second stage runs the arm64 binaries through
   qemu-user-static's binfmt_misc handler, registered here when missing), with openssh-server, python3-venv and
   Debian's arm64 kernel (linux-image-arm64) and its initramfs;
2. ONNX Runtime and numpy aarch64 wheels, the versions this host runs, fetched here
   (``pip download --platform manylinux_2_28_aarch64``) and installed into a venv in the guest (/opt/edgecompress);
   systemd-networkd (DHCP from QEMU's NAT), an SSH key of the script's own, a hostname;
3. an ext4 image made from the folder (``mkfs.ext4 -d``), the kernel and initrd copied beside it;
4. boot: ``qemu-system-aarch64 -M virt -cpu cortex-a76 -smp 2 -m 2048`` (TCG: no KVM on an x86 host), direct kernel
   boot, a virtio disk, user-mode networking with ``hostfwd`` 127.0.0.1:PORT -> 22, and WORK/ssh_config naming the
   board ``arm64-qemu``, so ``ssh -F WORK/ssh_config arm64-qemu`` reaches it like any board.

Steps 1-3 write WORK/build.json (their wall time, when), which the results carry. From scratch on the busy 2-core VM
(load 7-10): 23 min to build (debootstrap's second stage under qemu-user 22 of them), 99 s to answer over SSH.

The artifacts (built once under benchmarks/.cache/arm_emulated): the SST-2 teacher, all-MiniLM-L6-v2 fine-tuned on
SST-2 train by ``benchmarks/encoders/teacher.py`` for ``--sst2-steps`` steps (a short fine-tune: the point is Arm vs x86 on the
same model, not the best teacher), exported to ONNX and quantized with ONNX Runtime's dynamic INT8; the digits
MobileNetV2 of ``benchmarks/vision/image_teachers.py`` (trained from scratch on the digits train split: its 25 epochs, or
``--cnn-epochs N`` trained here), static QDQ INT8 calibrated on the training digits. Eval: SST-2 dev (872 sentences, or the first ``--sst2-limit``) and the 360 test
digits. Timing under emulation means nothing: the profile ``qemu-arm64`` says the device is emulated, and its latency
and cold-start budgets come out UNVERIFIED.

    python benchmarks/devices/arm_emulated.py [--work /work/arm64] [--cpu cortex-a76] [--only sst2|digits]
    python benchmarks/devices/arm_emulated.py --build-only        # the board only; it stays up for ssh -F WORK/ssh_config
    python benchmarks/devices/arm_emulated.py --stop              # power it off

Writes benchmarks/results/arm_emulated.json and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: benchmarks.harness
REPO = HERE.parent
SST2 = REPO.parent / "shared" / "data" / "sst2"
CACHE = HERE / ".cache" / "arm_emulated"
MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"  # Python 3.11, glibc 2.36: ONNX Runtime's manylinux_2_28 aarch64 wheel installs
# the wheels come from here: no ca-certificates (its rehash of each certificate takes many minutes under qemu-user)
PACKAGES = ("systemd-sysv", "udev", "kmod", "openssh-server", "python3", "python3-venv", "linux-image-arm64")
VENV = "/opt/edgecompress"
ALIAS = "arm64-qemu"
APT_HINT = "apt-get install qemu-system-arm qemu-user-static debootstrap e2fsprogs openssh-client"

# Runs on both CPUs on the same tensors: the model's first output per batch, nothing else (numpy + onnxruntime only).
LOGITS = """\
import sys, numpy as np, onnxruntime as ort
model, inputs, out, threads = sys.argv[1:5]
so = ort.SessionOptions(); so.intra_op_num_threads = int(threads)
s = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
names = {i.name for i in s.get_inputs()}
z = np.load(inputs)
n = 1 + max(int(k.split(".", 1)[0][1:]) for k in z.files)
res = [s.run(None, {k.split(".", 1)[1]: z[k] for k in z.files if k.startswith(f"b{i}.")
                    and k.split(".", 1)[1] in names})[0] for i in range(n)]
np.save(out, np.concatenate(res))
print(ort.__version__)
"""


def log(msg: str) -> None:
    print(f"[arm_emulated {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    log("$ " + " ".join(map(str, cmd)))
    return subprocess.run(cmd, **{"check": True, **kw})


class Board:
    """The emulated board's files under ``work`` and how to reach it."""

    def __init__(self, work: Path, cpu: str, vcpus: int, memory_mb: int, port: int):
        self.work, self.cpu, self.vcpus, self.memory_mb, self.port = work, cpu, vcpus, memory_mb, port
        self.rootfs, self.disk = work / "rootfs", work / "disk.img"
        self.kernel, self.initrd, self.key = work / "vmlinuz", work / "initrd.img", work / "id_ed25519"
        self.ssh_config, self.pidfile, self.serial = work / "ssh_config", work / "vm.pid", work / "serial.log"
        self.build_record = work / "build.json"

    # -- building -------------------------------------------------------------------------------------------------

    def build(self) -> None:
        for tool in ("qemu-system-aarch64", "debootstrap", "mkfs.ext4", "ssh", "ssh-keygen", "tar"):
            if shutil.which(tool) is None:
                raise SystemExit(f"error: {tool} not found; install Debian's packages: {APT_HINT}")
        self.work.mkdir(parents=True, exist_ok=True)
        if not self.disk.is_file():
            t0 = time.perf_counter()
            self._binfmt()
            self._debootstrap()
            self._configure()
            self._image()
            # kept beside the board: the results name how long it took to build, whenever that was
            self.build_record.write_text(json.dumps({"build_s": round(time.perf_counter() - t0),
                                                     "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                                     "suite": SUITE, "mirror": MIRROR}) + "\n")
        self._write_ssh_config()

    def _binfmt(self) -> None:
        """The arm64 binaries of debootstrap's second stage run through qemu-user-static (fix-binary: in a chroot)."""
        misc = Path("/proc/sys/fs/binfmt_misc")
        if (misc / "qemu-aarch64").is_file():
            return
        if not (misc / "register").exists():
            run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(misc)])
        conf = Path("/usr/lib/binfmt.d/qemu-aarch64.conf")
        if not conf.is_file():
            raise SystemExit(f"error: {conf} missing: qemu-user-static is not installed; {APT_HINT}")
        (misc / "register").write_text(conf.read_text().strip())

    def _debootstrap(self) -> None:
        if (self.rootfs / "etc" / "os-release").is_file():
            return
        partial = self.work / "rootfs.partial"
        shutil.rmtree(partial, ignore_errors=True)
        run(["debootstrap", "--foreign", "--arch=arm64", "--variant=minbase", f"--include={','.join(PACKAGES)}",
             SUITE, str(partial), MIRROR])
        # the initrd the kernel's postinst makes: the modules a virtio disk needs (ext4 and virtio are modules in
        # Debian's arm64 kernel), not MODULES=most, whose thousand module copies take an hour under qemu-user
        conf = partial / "etc" / "initramfs-tools"
        (conf / "conf.d").mkdir(parents=True, exist_ok=True)
        (conf / "conf.d" / "edgecompress-vm").write_text("MODULES=list\nCOMPRESS=gzip\n")
        (conf / "modules").write_text("virtio_pci\nvirtio_mmio\nvirtio_blk\nvirtio_net\next4\n")
        run(["chroot", str(partial), "/debootstrap/debootstrap", "--second-stage"])
        partial.rename(self.rootfs)

    def _wheels(self) -> Path:
        """ONNX Runtime's and numpy's aarch64 wheels, the versions this host runs (one comparison, two CPUs)."""
        import numpy
        import onnxruntime

        out = self.work / "wheels"
        if not any(out.glob("onnxruntime-*aarch64*.whl")):
            run([sys.executable, "-m", "pip", "download", "-q", "-d", str(out), "--only-binary=:all:",
                 "--python-version", "3.11", "--platform", "manylinux_2_28_aarch64", "--platform",
                 "manylinux2014_aarch64", f"onnxruntime=={onnxruntime.__version__}", f"numpy=={numpy.__version__}"])
        return out

    def _configure(self) -> None:
        r = self.rootfs
        (r / "etc" / "hostname").write_text(ALIAS + "\n")
        (r / "etc" / "hosts").write_text(f"127.0.0.1 localhost\n127.0.1.1 {ALIAS}\n")
        (r / "etc" / "fstab").write_text("/dev/vda / ext4 defaults,noatime 0 1\n")
        net = r / "etc" / "systemd" / "network"
        net.mkdir(parents=True, exist_ok=True)
        (net / "20-wired.network").write_text("[Match]\nName=e*\n\n[Network]\nDHCP=yes\n")
        wants = r / "etc" / "systemd" / "system" / "multi-user.target.wants"
        wants.mkdir(parents=True, exist_ok=True)
        link = wants / "systemd-networkd.service"
        if not link.is_symlink():
            link.symlink_to("/lib/systemd/system/systemd-networkd.service")
        if not self.key.is_file():
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edgecompress-arm-emulated", "-f", str(self.key)])
        ssh = r / "root" / ".ssh"
        ssh.mkdir(mode=0o700, parents=True, exist_ok=True)
        (ssh / "authorized_keys").write_text(Path(str(self.key) + ".pub").read_text())
        os.chmod(ssh / "authorized_keys", 0o600)
        # the venv made by the guest's Python; the aarch64 wheels installed into it by this host's pip (--target with
        # --platform: pip under qemu-user would take many minutes to do the same unpacking)
        run(["chroot", str(r), "python3", "-m", "venv", "--without-pip", VENV])
        site = r / VENV.lstrip("/") / "lib" / "python3.11" / "site-packages"
        run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--find-links", str(self._wheels()),
             "--target", str(site), "--platform", "manylinux_2_28_aarch64", "--platform", "manylinux2014_aarch64",
             "--python-version", "3.11",
             "--only-binary=:all:", "onnxruntime", "numpy"])
        run(["chroot", str(r), "apt-get", "clean"])

    def _image(self) -> None:
        boot = self.rootfs / "boot"
        if not any(boot.glob("initrd.img-*")):
            run(["chroot", str(self.rootfs), "update-initramfs", "-c", "-k", "all"])
        shutil.copy(max(boot.glob("vmlinuz-*")), self.kernel)
        shutil.copy(max(boot.glob("initrd.img-*")), self.initrd)
        tmp = self.disk.with_suffix(".partial")
        tmp.unlink(missing_ok=True)
        run(["mkfs.ext4", "-q", "-L", "root", "-d", str(self.rootfs), str(tmp), "6G"])
        tmp.rename(self.disk)

    def _write_ssh_config(self) -> None:
        self.ssh_config.write_text(
            f"Host {ALIAS}\n  HostName 127.0.0.1\n  Port {self.port}\n  User root\n  IdentityFile {self.key}\n"
            f"  IdentitiesOnly yes\n  UserKnownHostsFile {self.work / 'known_hosts'}\n"
            "  StrictHostKeyChecking accept-new\n  ServerAliveInterval 30\n  ServerAliveCountMax 20\n")

    # -- running --------------------------------------------------------------------------------------------------

    def ssh(self, command: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(["ssh", "-F", str(self.ssh_config), "-o", "BatchMode=yes", "-o", "ConnectTimeout=20",
                               ALIAS, command], **kw)

    def up(self) -> bool:
        return self.ssh("true", capture_output=True, timeout=120).returncode == 0

    def boot(self, timeout_s: float = 1800) -> float:
        """Start the VM (unless it answers already) and wait for SSH; returns the seconds it took."""
        t0 = time.perf_counter()
        if self.pidfile.is_file() and self.up():
            return 0.0
        run(["qemu-system-aarch64", "-M", "virt", "-cpu", self.cpu, "-smp", str(self.vcpus), "-m", str(self.memory_mb),
             "-kernel", str(self.kernel), "-initrd", str(self.initrd),
             "-append", "root=/dev/vda rw console=ttyAMA0 net.ifnames=0",
             "-drive", f"file={self.disk},format=raw,if=virtio",
             "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{self.port}-:22", "-device", "virtio-net-pci,netdev=n0",
             "-display", "none", "-serial", f"file:{self.serial}", "-daemonize", "-pidfile", str(self.pidfile)])
        while time.perf_counter() - t0 < timeout_s:
            time.sleep(15)
            if self.up():
                log(f"{ALIAS} answers over SSH after {time.perf_counter() - t0:.0f} s")
                return time.perf_counter() - t0
        raise SystemExit(f"error: the VM did not answer over SSH within {timeout_s:.0f} s; see {self.serial}")

    def stop(self) -> None:
        if self.pidfile.is_file():
            self.ssh("systemctl poweroff", capture_output=True, timeout=60)
            pid = int(self.pidfile.read_text())
            for _ in range(60):
                if not Path(f"/proc/{pid}").exists():
                    break
                time.sleep(2)
            else:
                os.kill(pid, 15)
            self.pidfile.unlink(missing_ok=True)

    def facts(self) -> dict:
        out = self.ssh(f"uname -srm; nproc; grep -m1 Features /proc/cpuinfo; cat /proc/device-tree/model; echo; "
                       f"{VENV}/bin/python -c 'import onnxruntime as o, numpy as n; print(o.__version__, n.__version__)'",
                       capture_output=True, text=True, check=True, timeout=600).stdout.splitlines()
        ort, np_v = out[4].split()
        return {"kernel": out[0], "vcpus": int(out[1]), "cpu_features": out[2].split(":", 1)[1].split(),
                "model": out[3].strip("\x00"), "onnxruntime": ort, "numpy": np_v, "qemu_cpu": self.cpu,
                "memory_mb": self.memory_mb, "python": VENV + "/bin/python"}


# -- the artifacts --------------------------------------------------------------------------------------------------

def models(args) -> dict[str, dict]:
    """Each model's teacher, INT8 artifact and eval data (built once under benchmarks/.cache/arm_emulated)."""
    from compress.artifact import is_artifact
    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig

    out = {}
    if args.only in (None, "sst2"):
        from benchmarks.harness.teachers import ensure_teacher

        teacher = ensure_teacher(SST2, CACHE / f"sst2-teacher-{args.sst2_steps}steps", max_steps=args.sst2_steps)
        data = SST2 / "dev.tsv"
        fp32, int8 = CACHE / f"sst2-{args.sst2_steps}steps-onnx-fp32", CACHE / f"sst2-{args.sst2_steps}steps-onnx-int8"
        if not is_artifact(int8):
            export(teacher, fp32, ExportConfig(sample_data=str(data)), force=True)
            quantize(fp32, int8, QuantizeConfig.from_flat(sample_data=str(data)), force=True)
        out["sst2"] = {"name": "SST-2 teacher (MiniLM-L6, fine-tuned %d steps), ONNX dynamic INT8" % args.sst2_steps,
                       "teacher": teacher, "artifact": int8, "data": data, "limit": args.sst2_limit}
    if args.only in (None, "digits"):
        digits = HERE / ".cache" / "digits"
        if not (digits / "test").is_dir():
            run([sys.executable, str(HERE / "vision" / "digits.py"), "--out", str(digits)])
        # the image benchmarks' teacher (25 epochs), or a shorter training of the same network kept here
        where = HERE / ".cache" / "images" if args.cnn_epochs is None else CACHE / f"cnn-{args.cnn_epochs}epochs"
        cnn = where / "cnn"
        if not (cnn / "config.json").is_file():
            run([sys.executable, str(HERE / "vision" / "image_teachers.py"), "--digits", str(digits), "--out", str(where),
                 "--only", "cnn", *(["--epochs", str(args.cnn_epochs)] if args.cnn_epochs else [])], cwd=REPO)
        tag = "" if args.cnn_epochs is None else f"-{args.cnn_epochs}epochs"
        fp32, int8 = CACHE / f"digits-cnn{tag}-onnx-fp32", CACHE / f"digits-cnn{tag}-onnx-int8"
        if not is_artifact(int8):
            export(cnn, fp32, ExportConfig(), force=True)
            quantize(fp32, int8, QuantizeConfig.from_flat(calibration=str(digits / "train")), force=True)
        epochs = f"{args.cnn_epochs} epochs" if args.cnn_epochs else "25 epochs"
        out["digits"] = {"name": f"digits MobileNetV2 ({epochs}), ONNX static QDQ INT8", "teacher": cnn, "artifact": int8,
                         "data": digits / "test", "limit": None}
    return out


def quick_profile() -> Path:
    """qemu-arm64 timing 10 calls instead of at least 100 and 5 s: under emulation timings judge nothing, they only
    exercise the runner's timing loop (each call of the SST-2 model takes seconds under TCG)."""
    path = CACHE / "qemu-arm64-quick.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("name: qemu-arm64-quick\nextends: qemu-arm64\nmeasure:\n  warmup: 2\n  min_runs: 10\n"
                    "  min_duration_s: 0\n  max_runs: 10\n")
    return path


def validate(board: Board | None, m: dict, report_dir: Path) -> dict:
    """``edgecompress validate`` of the artifact here (board None, profile host) or on the board (qemu-arm64,
    --remote); returns the report's figures."""
    cmd = ["edgecompress", "validate", str(m["artifact"]), "--data", str(m["data"]), "--teacher", str(m["teacher"]),
           "--report-dir", str(report_dir), "--force", "--no-baseline"]
    if m["limit"]:
        cmd += ["--limit", str(m["limit"])]
    if board is None:
        cmd += ["--profile", "host"]
    else:
        cmd += ["--profile", str(quick_profile()), "--remote", ALIAS, "--ssh-config", str(board.ssh_config),
                "--remote-python", f"{VENV}/bin/python"]
    t0 = time.perf_counter()
    proc = run(cmd, check=False)
    if proc.returncode not in (0, 1, 4, 5):
        raise SystemExit(f"error: validate exited {proc.returncode}: {' '.join(cmd)}")
    r = json.loads((report_dir / "report.json").read_text())
    met = r["metrics"]
    return {"command": " ".join(cmd), "exit_code": proc.returncode, "verdict": r["verdict"],
            "seconds": round(time.perf_counter() - t0, 1), "accuracy": met.get("metric"),
            "teacher_accuracy": met.get("teacher_metric"), "retention": met.get("retention"),
            "agreement_with_teacher": met.get("agreement"), "latency_p50_ms": met.get("latency_ms", {}).get("p50"),
            "cold_start_ms": met.get("cold_start_ms"), "measured_on": r["environment"].get("measured_on"),
            "budgets": {b["name"]: {"status": b["status"], "measured": b["measured"], "limit": b["limit"],
                                    "note": b.get("note")} for b in r["budgets"]},
            "warnings": r["warnings"]}


def eval_feeds(m: dict, path: Path, batch: int = 32) -> np.ndarray | None:
    """The eval data as the artifact's input tensors (its own tokenizer / image preprocessing), batch by batch, in
    one npz; returns the labels."""
    from compress.artifact import load_artifact
    from compress.data.images import load_image_dataset
    from compress.data.tables import load_dataset
    from compress.data.tokenization import encoder_for

    art = load_artifact(m["artifact"])
    if m["data"].is_dir():
        ds = load_image_dataset(m["data"], label2id={n: i for i, n in enumerate(art.manifest.labels or [])} or None)
    else:  # the rows validate --limit reads: the first ones
        ds = load_dataset(m["data"], label2id={n: i for i, n in enumerate(art.manifest.labels or [])} or None,
                          limit=m["limit"])
    enc = encoder_for(art)
    arrays = {}
    for i, (items, pairs, _) in enumerate(ds.batches(batch)):
        for name, arr in enc.encode(items, pairs).items():
            arrays[f"b{i}.{name}"] = arr
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return np.asarray(ds.labels) if ds.labels is not None else None


def logits_both(board: Board, m: dict, threads: int) -> dict:
    """The artifact's logits on the same tensors on this x86 host and on the Arm board; their agreement."""
    from compress.artifact import load_artifact

    model = load_artifact(m["artifact"])
    model_file = model.path / model.manifest.model_file
    with tempfile.TemporaryDirectory(prefix="arm-emulated-") as tmp:
        t = Path(tmp)
        labels = eval_feeds(m, t / "inputs.npz")
        shutil.copy(model_file, t / "model.onnx")
        (t / "logits.py").write_text(LOGITS)
        run([sys.executable, str(t / "logits.py"), str(t / "model.onnx"), str(t / "inputs.npz"), str(t / "x86.npy"),
             str(threads)], capture_output=True)
        remote = "/tmp/arm-emulated-logits"
        tar = subprocess.Popen(["tar", "-c", "-C", tmp, "model.onnx", "inputs.npz", "logits.py"], stdout=subprocess.PIPE)
        board.ssh(f"rm -rf {remote} && mkdir {remote} && tar -x -C {remote}", stdin=tar.stdout, check=True)
        tar.wait()
        t0 = time.perf_counter()
        board.ssh(f"cd {remote} && {VENV}/bin/python logits.py model.onnx inputs.npz arm.npy {threads}", check=True,
                  capture_output=True)
        arm_s = time.perf_counter() - t0
        with open(t / "arm.npy", "wb") as f:
            board.ssh(f"cat {remote}/arm.npy && rm -rf {remote}", stdout=f, check=True)
        x86, arm = np.load(t / "x86.npy"), np.load(t / "arm.npy")
    px, pa = x86.argmax(-1), arm.argmax(-1)
    diff = np.abs(x86.astype(np.float64) - arm.astype(np.float64))
    out = {"rows": int(len(x86)), "prediction_agreement": float((px == pa).mean()),
           "predictions_differing": int((px != pa).sum()), "max_abs_logit_diff": float(diff.max()),
           "mean_abs_logit_diff": float(diff.mean()), "bit_identical": bool(np.array_equal(x86, arm)),
           "logit_scale_max_abs": float(np.abs(x86).max()), "arm_eval_seconds": round(arm_s, 1)}
    if labels is not None:
        out["accuracy_x86"] = float((px == labels).mean())
        out["accuracy_arm"] = float((pa == labels).mean())
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/work/arm64"), help="where the board lives (outside the repo)")
    ap.add_argument("--cpu", default="cortex-a76", help="QEMU CPU model (cortex-a72: no dot product; max: i8mm, SVE)")
    ap.add_argument("--vcpus", type=int, default=2)
    ap.add_argument("--memory-mb", type=int, default=2048)
    ap.add_argument("--port", type=int, default=2222, help="host port forwarded to the board's SSH")
    ap.add_argument("--only", choices=("sst2", "digits"))
    ap.add_argument("--sst2-steps", type=int, default=100, help="fine-tuning steps of the SST-2 teacher")
    ap.add_argument("--sst2-limit", type=int, default=None, help="first N SST-2 dev rows (default all 872)")
    ap.add_argument("--cnn-epochs", type=int, default=None, help="train the digits MobileNetV2 this many epochs "
                    "(kept under benchmarks/.cache/arm_emulated) instead of using the image benchmarks' (25 epochs)")
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads of the logits comparison")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "arm_emulated.json")
    ap.add_argument("--build-only", action="store_true", help="build and boot the board, then stop")
    ap.add_argument("--stop", action="store_true", help="power the board off")
    ap.add_argument("--keep-running", action="store_true", help="leave the board up afterwards")
    args = ap.parse_args()
    board = Board(args.work.resolve(), args.cpu, args.vcpus, args.memory_mb, args.port)
    if args.stop:
        board.stop()
        return 0
    board.build()
    boot_s = board.boot()
    facts = board.facts()
    build = json.loads(board.build_record.read_text()) if board.build_record.is_file() else {}
    log(f"board: {facts}; built in {build.get('build_s', '?')} s ({build.get('built', 'when: not recorded')}), "
        f"booted in {boot_s:.0f} s")
    if args.build_only:
        return 0
    from benchmarks.harness.results import write_results

    results = json.loads(args.out.read_text()).get("models", {}) if args.only and args.out.is_file() else {}
    try:
        for key, m in models(args).items():
            log(f"{m['name']}: validate on this host, then on {ALIAS}")
            reports = CACHE / "reports" / key
            row = {"model": m["name"], "artifact": str(m["artifact"].relative_to(REPO)),
                   "data": str(m["data"]), "rows_limit": m["limit"],
                   "x86": validate(None, m, reports / "x86"), "arm": validate(board, m, reports / "arm")}
            log(f"{m['name']}: the same tensors through both CPUs")
            row["same_inputs"] = logits_both(board, m, args.threads)
            results[key] = row
            log(f"{key}: {json.dumps(row['same_inputs'])}")
            write_results(args.out, {"board": facts, "build": build, "boot_s": round(boot_s), "models": results})
    finally:
        if not args.keep_running:
            board.stop()
    table(results)
    return 0


def table(results: dict) -> None:
    print("| model | accuracy x86 / Arm (validate) | agreement with teacher x86 / Arm | same inputs: predictions agree "
          "| max abs logit diff | Arm verdict |")
    print("|---|---|---|---|---|---|")
    for r in results.values():
        x, a, s = r["x86"], r["arm"], r["same_inputs"]
        print(f"| {r['model']} | {x['accuracy']:.4f} / {a['accuracy']:.4f} | {x['agreement_with_teacher']:.4f} / "
              f"{a['agreement_with_teacher']:.4f} | {s['prediction_agreement']:.4f} ({s['predictions_differing']} of "
              f"{s['rows']} differ) | {s['max_abs_logit_diff']:.3g} | {a['verdict'].upper()} |")


if __name__ == "__main__":
    raise SystemExit(main())
