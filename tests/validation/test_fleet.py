"""``validate --remote`` on a fleet: three SSH devices on this machine, one of which drops off mid-run.

Each device is a real sshd (tests/builders/sshd.py) in a network namespace of its own, reached at its own address
(10.213.N.2, port 22) as a separate host; where namespaces cannot be made (not root, a container without
CAP_NET_ADMIN) the three listen on 127.0.0.1 on three ports instead (``DEVICES_AS`` says which ran). The artifact,
teacher and data are the suite's tiny random ones (test material: their figures mean nothing, their equality does).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import threading
from pathlib import Path

import pytest
import yaml
from conftest import write_tsv
from test_remote import assert_one_line_error, cli, write_profile

from compress.validation import fleet, remote
from tests.builders.sshd import make_netns, running_sshd

DEVICES_AS: list[str] = []  # "network namespaces" or "loopback ports": how the module's devices were made


@pytest.fixture(scope="module")
def devices(tmp_path_factory):
    """Three running test devices (Loopback), each in its own network namespace when this machine allows it."""
    with contextlib.ExitStack() as stack:
        lbs = []
        for i in range(3):
            ns = f"ec-fleet-{os.getpid()}-{i}"
            addr = stack.enter_context(make_netns(ns, i))
            root = tmp_path_factory.mktemp(f"device{i}")
            lb = None
            if addr:
                try:
                    lb = stack.enter_context(running_sshd(root / "netns", host=addr, netns=ns))
                except pytest.skip.Exception:  # a namespace was made but sshd cannot run in it here
                    lb = None
            lbs.append(lb or stack.enter_context(running_sshd(root)))
        DEVICES_AS.append("network namespaces" if lbs[0].netns else "loopback ports")
        yield lbs


@pytest.fixture(scope="module")
def fleet_profile(tmp_path_factory) -> Path:
    import platform

    parent = "cpu-arm64-neon" if platform.machine().lower() in ("aarch64", "arm64") else "cpu-x86-avx2"
    return write_profile(tmp_path_factory.mktemp("profiles"), "board", parent)


def fleet_file(path: Path, lbs, profile: Path, overrides: dict[int, dict] | None = None) -> Path:
    """A fleet file naming each device by its address, port, ssh_config and profile (``overrides``: by index)."""
    entries = [{"name": f"board{i + 1}", "host": lb.host, "port": lb.port, "user": lb.user,
                "ssh_config": str(lb.ssh_config()), "profile": str(profile), **(overrides or {}).get(i, {})}
               for i, lb in enumerate(lbs)]
    path.write_text(yaml.safe_dump({"python": sys.executable, "devices": entries}, sort_keys=False), encoding="utf-8")
    return path


def test_three_devices_in_parallel_one_drops_off(devices, int8_artifact, bert_classifier, fleet_profile, home,
                                                 tmp_path, monkeypatch, capsys):
    """All three are checked and sent their job at once (a barrier only the three together pass); the third's sshd
    is stopped right after its upload, so measuring there is refused: it is marked unreachable, the two others'
    verdicts are kept, the run ends INCOMPLETE (exit 7), and `gate` compares device by device."""
    barrier = threading.Barrier(3, timeout=60)
    lost = devices[2]

    def after_upload(target, workdir):
        barrier.wait()  # raises BrokenBarrierError (a bug, not a lost device) when the devices run one by one
        if target.host == lost.host and target.port == lost.port:
            lost.stop()

    monkeypatch.setattr(remote, "_after_transfer", after_upload)
    data = write_tsv(tmp_path / "data")
    out = tmp_path / "report"
    code, stdout, err = cli(capsys, "validate", int8_artifact.path, "--data", data, "--teacher", bert_classifier,
                            "--no-baseline", "--no-cold-start", "--report-dir", out,
                            "--remote", fleet_file(tmp_path / "fleet.yaml", devices, fleet_profile, {1: {
                                # board2's ssh_config offers a key it refuses: its fleet entry's key: gets it in
                                "ssh_config": str(devices[1].ssh_config("ssh_config_wrong_key", key="wrong_key")),
                                "key": str(devices[1].root / "client_key")}}))
    assert code == 7, (code, err)
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("INCOMPLETE: 1 of 3 devices did not answer or failed there: "), err
    assert "board3 (unreachable while sending and measuring" in err and "connection refused" in err
    report = json.loads((out / "report.json").read_text())
    assert report["kind"] == "fleet" and report["verdict"] == "incomplete"
    rows = {r["name"]: r for r in report["devices"]}
    # no budget fails on the answering two (without a cold-start probe that budget is UNVERIFIED)
    assert rows["board1"]["status"] == rows["board2"]["status"] in ("pass", "unverified")
    assert rows["board3"]["status"] == "unreachable" and rows["board3"]["phase"] == "sending and measuring"
    assert rows["board3"]["report"] is None and rows["board3"]["left_on_device"]
    assert any("board3 left" in w for w in report["warnings"])
    one, two = (json.loads((out / rows[n]["report"]).read_text()) for n in ("board1", "board2"))
    for dev, lb in ((one, devices[0]), (two, devices[1])):
        assert dev["environment"]["remote"]["target"] == f"{lb.user}@{lb.host}:{lb.port}"
        assert dev["environment"]["measured_on"].startswith(f"remote: {lb.user}@{lb.host} (")
        assert dev["data"]["rows"] == one["data"]["rows"] > 0  # the fleet's eval data, recorded per device
        assert lb.leftovers() == []
    for key in ("metric", "agreement", "eval_samples"):  # the same artifact and inputs: the same outputs
        assert one["metrics"][key] == two["metrics"][key], key
    # the controller's work ran once for the two answering devices' shared profile, in parallel with nothing
    assert set(report["phases_s"]) == {"checking", "preparing", "sending_and_measuring", "judging"}
    html = (out / "report.html").read_text()
    assert all(f">board{i}<" in html for i in (1, 2, 3)) and "UNREACHABLE" in html
    assert (out / "devices" / "board1" / "report.html").is_file()
    junit = (out / "junit.xml").read_text()
    assert junit.count("<testsuite ") == 3 and 'type="unreachable"' in junit
    stale = lost.leftovers()
    assert len(stale) == 1 and rows["board3"]["left_on_device"].endswith(stale[0])
    shutil.rmtree(lost.remote_tmp / stale[0])

    # gate, device by device, against a "last release" whose board2 was 3x faster (its samples scaled: test
    # material for a known regression) and whose board3 answered
    base = tmp_path / "release"
    shutil.copytree(out, base)
    b2 = base / rows["board2"]["report"]
    old = json.loads(b2.read_text())
    old["metrics"]["latency_samples_ms"]["artifact"] = [x / 3 for x in old["metrics"]["latency_samples_ms"]["artifact"]]
    b2.write_text(json.dumps(old))
    gj = tmp_path / "gate.json"
    code, stdout, err = cli(capsys, "gate", out, "--baseline", base, "--json", gj, "--markdown", tmp_path / "gate.md")
    assert code == 1, (code, stdout, err)
    by = {r["name"]: r for r in json.loads(gj.read_text())["results"]}
    assert by["board1"]["verdict"] in ("pass", "inconclusive")  # the same measurement on both sides
    assert by["board2"]["verdict"] == "regressed"
    assert by["board3"]["verdict"] == "not comparable" and "not measured in this run" in by["board3"]["differences"][0]
    assert "board2: REGRESSED" in stdout
    summary = (tmp_path / "gate.md").read_text()
    assert "| device | verdict |" in summary and "| board2 | regressed |" in summary


def test_ctrl_c_cleans_every_device(devices, int8_artifact, fleet_profile, home, tmp_path, monkeypatch):
    """Ctrl-C (SIGINT to the main thread, waiting on the devices) once both devices have their files: the runs there
    are stopped and both work directories removed before KeyboardInterrupt reaches the caller."""
    import signal

    from compress.validation.config import ValidateConfig
    from compress.validation.local import validate_fleet

    barrier = threading.Barrier(2, timeout=60)

    def interrupt(target, workdir):
        assert Path(workdir).is_dir()  # the device's files are on this machine
        if barrier.wait() == 0:
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    monkeypatch.setattr(remote, "_after_transfer", interrupt)
    cfg = ValidateConfig.from_flat(baseline=False, cold_start=False,
                                   remote=str(fleet_file(tmp_path / "fleet.yaml", devices[:2], fleet_profile)))
    # as a terminal's Ctrl-C finds it: a test run started in the background by a non-interactive shell (`cmd &`)
    # inherits SIGINT ignored, and an ignored signal rightly stops nothing
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            validate_fleet(int8_artifact, cfg)
    finally:
        signal.signal(signal.SIGINT, old)
    assert devices[0].leftovers() == [] and devices[1].leftovers() == []


def test_a_host_named_twice_is_refused(int8_artifact, fleet_profile, tmp_path, capsys, home):
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump({"profile": str(fleet_profile), "devices": [
        {"host": "10.0.0.11"}, {"host": "board.lan", "port": 2222}, {"host": "10.0.0.11", "user": "pi"}]}))
    code, _, err = cli(capsys, "validate", int8_artifact.path, "--remote", path)
    line = assert_one_line_error(code, err, "device 3", "host 10.0.0.11 port 22 is named twice", "name each device once")
    assert "device 1" in line
    code, _, err = cli(capsys, "validate", int8_artifact.path, "--profile", fleet_profile,
                       "--remote", "pi@board:22", "--remote", "root@board:22")
    assert_one_line_error(code, err, "host board port 22 is named twice")
    code, _, err = cli(capsys, "validate", int8_artifact.path, "--profile", fleet_profile,
                       "--remote", "pi@board,root@board:22")  # ssh's default port: the same device
    assert_one_line_error(code, err, "host board port 22 is named twice")


@pytest.mark.parametrize("content, words", [
    ({"devices": []}, ["devices", "at least 1"]),
    ({"devices": [{"host": "b", "prot": 22}]}, ["devices -> 0 -> prot", "Extra inputs"]),
    ({"devices": [{"host": "pi@b:22"}]}, ["carries a user or port", "user: and port:"]),
    ({"devices": [{"host": "b", "key": "no-such-key"}]}, ["key", "no such file"]),
    ({"devices": [{"host": "b"}]}, ["--profile host describes this machine"]),
    ({"devices": [{"host": "b", "profile": "no-such-board"}]}, ["device 1 (b)", "no-such-board"]),
])
def test_a_bad_fleet_file_is_one_line(content, words, int8_artifact, tmp_path, capsys, home):
    path = tmp_path / "fleet.yml"
    path.write_text(yaml.safe_dump(content))
    code, _, err = cli(capsys, "validate", int8_artifact.path, "--remote", path)
    assert_one_line_error(code, err, *words)


def test_a_profile_for_another_architecture_is_refused_before_any_work(devices, int8_artifact, fleet_profile,
                                                                       tmp_path, capsys, home):
    """board2's profile is for the other architecture than its `uname -m`: one line naming it, exit 2, and no work
    directory left on any device (all were checked at once, then cleaned)."""
    import platform

    other = "cpu-x86-avx2" if platform.machine().lower() in ("aarch64", "arm64") else "cpu-arm64-neon"
    wrong = write_profile(tmp_path / "profiles", "other-arch-board", other)
    path = fleet_file(tmp_path / "fleet.yaml", devices[:2], fleet_profile, {1: {"profile": str(wrong)}})
    code, _, err = cli(capsys, "validate", int8_artifact.path, "--no-baseline", "--remote", path)
    assert_one_line_error(code, err, f"{devices[1].host}:{devices[1].port}", "other-arch-board describes an")
    assert devices[0].leftovers() == [] and devices[1].leftovers() == []


def test_plain_validate_refuses_several_devices(int8_artifact, fleet_profile, home):
    """validate() (a recipe's step, a search) reads one device's report: several devices are refused before any work."""
    from compress.errors import ConfigError
    from compress.validation.config import ValidateConfig
    from compress.validation.local import validate

    with pytest.raises(ConfigError, match="names several devices.*validate_fleet"):
        validate(int8_artifact, ValidateConfig.from_flat(profile=str(fleet_profile), remote="pi@board1,pi@board2"))


def test_the_overall_verdict_is_the_worst():
    assert fleet.overall(["pass", "unverified", "pass"]) == "unverified"
    assert fleet.overall(["pass", "unreachable", "anomalous"]) == "incomplete"
    assert fleet.overall(["error", "pass"]) == "incomplete"
    assert fleet.overall(["unreachable", "fail", "pass"]) == "fail"
    assert fleet.overall(["pass", "pass"]) == "pass"
    assert fleet.is_fleet("pi@a,pi@b") and fleet.is_fleet("shelf.yaml") and fleet.is_fleet("x/fleet.YML")
    assert not fleet.is_fleet("pi@raspberrypi.local:22") and not fleet.is_fleet(None)
