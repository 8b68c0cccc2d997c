"""The runner on device-like Pythons and on devices:
- in two venvs that hold only numpy and a device runtime (tflite-runtime 2.14 with numpy 1.x;
  ai-edge-litert + onnxruntime with numpy 2), built by `make runner-venvs`;
- `edge bench --device ssh://...` against a real sshd on 127.0.0.1, started here with a throwaway
  host key and client key (openssh-server comes from `make sysdeps`);
- `edge bench --device pi-emu` in the emulated arm64 Raspberry Pi (marker pi_emu, `make test-device`)."""
from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import edge
from edge.benchmark import bench, format_table
from edge.device import RUNNER, remote
from edge.errors import EdgeError, UserError

import multi_io

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
SSHD = Path("/usr/sbin/sshd")
RUNNER_VENVS = {"tflite-runtime": ("tflite-runtime", "1."), "litert": ("ai-edge-litert", "2."),
                "executorch-numpy": ("executorch-numpy-runtime", "2.")}  # (dist, numpy)


@pytest.fixture(scope="module")
def builds(tmp_path_factory) -> dict[str, Path]:
    """Tiny artifacts: fp32 for every target, and a TFLite int8 with int8 input and output."""
    base = tmp_path_factory.mktemp("builds")
    edge.build(model="tiny", target="all", precision="fp32", weights="random", out=str(base / "fp32"))
    edge.build(model="tiny", target="tflite", precision="int8", io="int8", weights="random", out=str(base / "int8"))
    return {"onnx": base / "fp32/onnx", "tflite": base / "fp32/tflite", "ptl": base / "fp32/torchscript-mobile",
            "pte": base / "fp32/executorch",
            "tflite-int8": base / "int8" / "tflite"}


def artifact_in(folder: Path) -> Path:
    return folder / json.loads((folder / "manifest.json").read_text())["artifact"]


def run(python: str | Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), *map(str, args)], capture_output=True, text=True, env=ENV, timeout=600)


# ---------------------------------------------------------------- device-like venvs

def runner_venv(name: str) -> Path:
    python = ROOT / f".venv-runner-{name}" / "bin" / "python"
    if not python.exists():
        pytest.skip(f"{python.parent.parent.name} is missing: run `make runner-venvs`")
    return python


@pytest.mark.parametrize("venv,kind", [("tflite-runtime", "tflite"), ("tflite-runtime", "tflite-int8"),
                                       ("litert", "tflite"), ("litert", "tflite-int8"), ("litert", "onnx"),
                                       ("executorch-numpy", "pte")])
def test_runner_in_device_venv(venv, kind, builds, tmp_path):
    """Same JSON contract and the same outputs as on the full host stack, with the old and the new
    TFLite interpreter and numpy 1 and 2, and a .pte in ExecuTorch's torch-free runtime (the host
    runs it in executorch's own, which links libtorch)."""
    python, (dist, numpy_major) = runner_venv(venv), RUNNER_VENVS[venv]
    artifact = artifact_in(builds[kind])
    np.save(tmp_path / "x.npy", np.random.default_rng(3).standard_normal((1, 3, 32, 32)).astype(np.float32))
    outs = {}
    for who, py in (("device", python), ("host", sys.executable)):
        proc = run(py, RUNNER, artifact, "--runs", 3, "--warmup", 1, "--threads", 1, "--input", tmp_path / "x.npy",
                   "--save-output", tmp_path / f"{who}.npy")
        assert proc.returncode == 0, proc.stderr
        outs[who] = json.loads(proc.stdout)
    r = outs["device"]
    assert r["schema"] == "edge-bench/1" and r["runs"] == 3 and r["threads"] == 1
    assert r["input"] == outs["host"]["input"] and r["output"] == outs["host"]["output"]
    env = r["environment"]
    assert env["runtimes"][dist] and env["numpy"].startswith(numpy_major) and env["runtimes"]["torch"] is None
    if kind != "onnx":
        assert r["runtime"]["name"] == dist
    # int8 kernels of different interpreter releases may round an output one step apart
    step = json.loads((artifact.parent / "manifest.json").read_text())["output"].get("scale") or 0.0
    np.testing.assert_allclose(np.load(tmp_path / "device.npy"), np.load(tmp_path / "host.npy"),
                               rtol=1e-5, atol=1e-6 + step * 1.001)


@pytest.fixture(scope="module")
def multi(tmp_path_factory) -> multi_io.Builds:
    """Artifacts with several inputs and outputs made without edge's pipeline (tests/multi_io.py)."""
    return multi_io.Builds(tmp_path_factory.mktemp("multi-io"))


# tflite-runtime 2.14's int8 kernels land up to 1.5 steps from today's on this model's logits, so
# there only fp32 is held to the host's figures.
@pytest.mark.parametrize("venv,kind", [("litert", "onnx"), ("litert", "tflite-fp32"), ("litert", "tflite-int8"),
                                       ("tflite-runtime", "tflite-fp32")])
def test_runner_several_inputs_in_device_venv(venv, kind, multi, tmp_path):
    """Named inputs and outputs on a device-like Python: the outputs are what the runtime gives on
    the host for the same data, exactly (fp32, same kernels) or within one quantization step."""
    python, artifact = runner_venv(venv), multi[kind]
    x = multi_io.inputs_for(artifact, seed=4)
    np.savez(tmp_path / "x.npz", **x)
    proc = run(python, RUNNER, "--runs", 2, "--warmup", 0, "--threads", 1, "--input", tmp_path / "x.npz",
               "--save-output", tmp_path / "y.npz", "--", artifact)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert [o["name"] for o in r["outputs"]] == [o["name"] for o in json.loads(
        (artifact.parent / "manifest.json").read_text())["outputs"]]
    expected, steps = multi_io.REFERENCES[kind](artifact, x), multi_io.output_steps(artifact.parent)
    with np.load(tmp_path / "y.npz") as y:
        for name, want in expected.items():
            atol = steps[name] * 1.001 if steps[name] else 1e-6 if venv == "tflite-runtime" else 0
            np.testing.assert_allclose(y[name], want, rtol=0, atol=atol, err_msg=name)


def test_runner_image_without_pillow(builds):
    """A device Python without Pillow: --image says how to install it, in one line."""
    photo = ROOT / "edge" / "assets" / "calib" / "chelsea.jpg"
    proc = run(runner_venv("litert"), RUNNER, artifact_in(builds["onnx"]), "--runs", 1, "--image", photo)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("runner: error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "pip install pillow" in errors[0], proc.stderr


def test_runner_args_put_the_artifact_after_double_dash(builds, tmp_path):
    """The device's argv names the artifact after --, so -x.onnx is a file, not an option."""
    shutil.copy(RUNNER, tmp_path / "runner.py")
    shutil.copy(artifact_in(builds["onnx"]), tmp_path / "-x.onnx")
    argv = remote.runner_args(Path("-x.onnx"), None, ["--runs", "1", "--warmup", "0"])
    proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=ENV, cwd=tmp_path)
    assert proc.returncode == 0 and json.loads(proc.stdout)["artifact"] == "-x.onnx", proc.stderr


@pytest.mark.parametrize("venv,kind,words", [("tflite-runtime", "onnx", "pip install onnxruntime"),
                                             ("litert", "ptl", "torch"), ("litert", "pte", "pip install executorch")])
def test_runner_venv_without_the_runtime(venv, kind, words, builds):
    proc = run(runner_venv(venv), RUNNER, artifact_in(builds[kind]), "--runs", 1)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("runner: error:")]
    assert proc.returncode == 2 and len(errors) == 1 and words in errors[0], proc.stderr


# ---------------------------------------------------------------- a real sshd on 127.0.0.1

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """sshd on 127.0.0.1:PORT for the current user, with a throwaway host key and client key.
    Yields (url, key, ssh options)."""
    if not SSHD.exists():
        pytest.skip("openssh-server is not installed: run `make sysdeps` (as root)")
    if os.geteuid() != 0:
        pytest.skip("starting sshd for the ssh tests needs root")
    d = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
    shutil.copy(d / "client_key.pub", d / "authorized_keys")
    port = free_port()
    (d / "sshd_config").write_text("\n".join([
        "ListenAddress 127.0.0.1", f"Port {port}", f"HostKey {d / 'host_key'}", f"PidFile {d / 'sshd.pid'}",
        f"AuthorizedKeysFile {d / 'authorized_keys'}", "PermitRootLogin prohibit-password",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "StrictModes no", "UsePAM no",
        "LogLevel ERROR", ""]))
    Path("/run/sshd").mkdir(exist_ok=True)  # the privilege-separation folder sshd insists on
    proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(d / "sshd_config")], stderr=open(d / "log", "w"))
    options = (f"UserKnownHostsFile={d / 'known_hosts'}", "StrictHostKeyChecking=accept-new")
    user = os.environ.get("USER") or "root"
    for _ in range(100):
        if subprocess.run(remote.SSHDevice("127.0.0.1", user, port, options=options, key=str(d / "client_key"))
                          .ssh_command("true"), capture_output=True).returncode == 0:
            break
        time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail(f"sshd did not come up: {(d / 'log').read_text()}")
    yield f"ssh://{user}@127.0.0.1:{port}", str(d / "client_key"), options
    proc.terminate()
    proc.wait(10)


def ssh_device(sshd, python=sys.executable) -> remote.SSHDevice:
    url, key, options = sshd
    return remote.parse(url, str(python), options, key)


def leftovers() -> set[str]:
    return set(glob.glob("/tmp/edge-bench.*"))


def test_ssh_bench(sshd, builds, tmp_path):
    """Files with awkward names reach the device intact, run there, come back as JSON, and the
    temporary folder is gone afterwards."""
    odd = tmp_path / "it's a $(touch pwned) model;"
    for kind in ("onnx", "pte", "tflite"):
        shutil.copytree(builds[kind], odd / kind)
    os.rename(artifact_in(odd / "onnx"), odd / "onnx" / "m o'd`el$.onnx")
    m = json.loads((odd / "onnx" / "manifest.json").read_text())
    (odd / "onnx" / "manifest.json").write_text(json.dumps(m | {"artifact": "m o'd`el$.onnx"}))
    before = leftovers()
    results = bench([str(odd)], threads=1, runs=3, warmup=1, progress=False, device=ssh_device(sshd))
    assert [r["format"] for r in results] == ["onnx", "pte", "tflite"]
    for r in results:
        assert r["device"] == {"name": sshd[0], "emulated": False} and r["runs"] == 3
        assert r["device_path"].startswith("/tmp/edge-bench.") and Path(r["path"]).parent.parent == odd
    assert results[0]["artifact"] == "m o'd`el$.onnx"
    assert leftovers() == before and not Path("pwned").exists() and not (Path.home() / "pwned").exists()
    assert sshd[0] in format_table(results).splitlines()[1]


def test_ssh_refused(sshd, builds):
    url, key, options = sshd
    dead = remote.parse(f"ssh://root@127.0.0.1:{free_port()}", sys.executable, options, key)
    with pytest.raises(EdgeError) as e:
        bench([str(builds["onnx"])], runs=1, warmup=0, progress=False, device=dead)
    assert "cannot reach" in str(e.value) and "Connection refused" in str(e.value) and "\n" not in str(e.value)


def test_ssh_device_without_the_runtime(sshd, builds, tmp_path):
    """A device Python with numpy but no onnxruntime: the runner's own one-line error comes back."""
    python = runner_venv("tflite-runtime")
    with pytest.raises(UserError) as e:
        bench([str(builds["onnx"])], runs=1, warmup=0, progress=False, device=ssh_device(sshd, python))
    assert str(e.value).startswith(sshd[0]) and "pip install onnxruntime" in str(e.value)
    with pytest.raises(UserError, match="not found on the device; pass --device-python"):
        bench([str(builds["onnx"])], runs=1, warmup=0, progress=False,
              device=ssh_device(sshd, tmp_path / "no python here"))


def test_ssh_crash_on_the_device(sshd, builds, tmp_path):
    """The device kills the runner (here: a CPU-time limit, SIGXCPU): a one-line error, no JSON."""
    limited = tmp_path / "limited-python"
    limited.write_text(f'#!/bin/sh\nulimit -S -t 1\nexec "{sys.executable}" "$@"\n')
    limited.chmod(0o755)
    before = leftovers()
    with pytest.raises(EdgeError) as e:
        bench([str(builds["onnx"])], runs=10_000_000, warmup=0, progress=False, device=ssh_device(sshd, limited))
    assert "crashed on " + sshd[0] in str(e.value) and "SIGXCPU" in str(e.value) and "\n" not in str(e.value)
    assert leftovers() == before


def test_ssh_cli(sshd, builds, tmp_path):
    url, key, options = sshd
    args = ["bench", str(builds["tflite"]), "--runs", "2", "--warmup", "0", "--device", url,
            "--device-python", sys.executable, "--ssh-key", key, "--json", str(tmp_path / "r.json")]
    for o in options:
        args += ["--ssh-option", o]
    proc = subprocess.run([sys.executable, "-m", "edge.cli", "-q", *args], capture_output=True, text=True, env=ENV)
    assert proc.returncode == 0, proc.stderr
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["results"][0]["device"]["name"] == url and url in proc.stdout


@pytest.mark.parametrize("spec,words", [("ssh://", "not of the form"), ("ssh://pi@host:port", "port is not a number"),
                                        ("ssh://pi@host/tmp", "not of the form"), ("pi5", "unknown --device")])
def test_bad_device_spec(spec, words):
    with pytest.raises(UserError, match=words):
        remote.parse(spec)


def test_pin_with_device(builds):
    with pytest.raises(UserError, match="--pin pins host CPUs"):
        bench([str(builds["onnx"])], pin="0", device=remote.parse("ssh://pi@localhost"))


# ---------------------------------------------------------------- the emulated Raspberry Pi

@pytest.mark.pi_emu
def test_pi_emu(builds, tmp_path):
    """Every .tflite/.onnx kind runs in arm64 Bookworm under QEMU, matches the host within the
    parity budgets, and is marked emulated. Builds the root on first use (about 10 minutes)."""
    from edge.device import piemu

    piemu.setup()
    results = bench([str(builds[k]) for k in ("onnx", "tflite", "tflite-int8")], threads=1, runs=2, warmup=0,
                    progress=False, device=remote.parse("pi-emu"))
    for r in results:
        assert r["device"] == {"name": "pi-emu", "emulated": True}
        assert r["environment"]["machine"] == "aarch64" and r["environment"]["python"].startswith("3.11.")
        p = r["parity_vs_host"]
        assert p["passed"] and p["sample_source"].startswith("chelsea.jpg") and r["input"]["source"] == "input.npy"
    assert "pi-emu (emulated)" in format_table(results)
    with pytest.raises(UserError, match="needs torch"):
        bench([str(builds["ptl"])], progress=False, device=remote.parse("pi-emu"))
    with pytest.raises(UserError, match="use --device pi-emu:trixie"):
        bench([str(builds["pte"])], progress=False, device=remote.parse("pi-emu"))


@pytest.mark.pi_emu
def test_pi_emu_trixie_runs_pte_in_the_numpy_runtime(builds, tmp_path):
    """.pte files (fp32 and int8) in arm64 Trixie (Python 3.13) under QEMU, in ExecuTorch's torch-free
    runtime, match the host's executorch runtime within the parity budgets; .tflite runs there too.
    Builds that root on first use (about 10 minutes)."""
    from edge.device import piemu

    piemu.setup(suite="trixie")
    int8 = tmp_path / "pte-int8"
    edge.build(model="tiny", target="executorch", precision="int8", weights="random", out=str(int8))
    results = bench([str(builds["pte"]), str(int8 / "executorch"), str(builds["tflite"])], threads=1, runs=2,
                    warmup=0, progress=False, device=remote.parse("pi-emu:trixie"))
    for r in results:
        assert r["device"] == {"name": "pi-emu:trixie", "emulated": True}
        assert r["environment"]["machine"] == "aarch64" and r["environment"]["python"].startswith("3.13.")
        assert r["parity_vs_host"]["passed"]
    assert [r["runtime"]["name"] for r in results[:2]] == ["executorch-numpy-runtime"] * 2
    assert results[2]["runtime"]["name"] == "ai-edge-litert"


@pytest.mark.skipif(shutil.which("setpriv") is None or not Path("/usr/bin/python3").exists() or os.geteuid() != 0,
                    reason="needs root, setpriv and /usr/bin/python3 to drop to an unprivileged user")
def test_pi_emu_needs_root(tmp_path):
    """As an ordinary user (nobody; the system python, since this venv's may not be readable):
    one line that says why."""
    code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); from edge.device import piemu; piemu.check_host()"
    proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c",
                           code], capture_output=True, text=True, cwd=tmp_path)
    assert proc.stderr.strip().splitlines()[-1] == ("edge.errors.UserError: the emulated Pi needs root (chroot, "
                                                    "mounts, binfmt_misc); run edge as root or with sudo")


@pytest.mark.pi_emu
def test_pi_emu_with_binfmt_handler_disabled(builds):
    """A disabled QEMU handler (echo 0 > /proc/sys/fs/binfmt_misc/qemu-aarch64): one line that
    says how to enable it, before anything runs. The handler is enabled again afterwards."""
    from edge.device import piemu

    piemu.setup()
    handler = piemu.BINFMT / "qemu-aarch64"
    handler.write_text("0")
    try:
        with pytest.raises(UserError) as e:
            bench([str(builds["onnx"])], runs=1, warmup=0, progress=False, device=remote.parse("pi-emu"))
    finally:
        handler.write_text("1")
    assert "is disabled" in str(e.value) and f"echo 1 > {handler}" in str(e.value) and "\n" not in str(e.value)
    (r,) = bench([str(builds["onnx"])], runs=1, warmup=0, progress=False, device=remote.parse("pi-emu"))
    assert r["parity_vs_host"]["passed"]
