"""Devices that `edge bench --device` runs the on-device runner on.

- `ssh://user@host[:port]`: a real board. One ssh connection streams a tar of runner.py, the
  artifact and its manifest into a fresh `mktemp -d` folder on the device, runs the runner with
  the device's python, prints its JSON back and removes the folder, whatever happened. Every
  name reaches the remote shell through shlex.quote, as positional arguments of a fixed script.
- `pi-emu`: the emulated Raspberry Pi of edge.device.piemu (QEMU user mode, arm64 Bookworm).
  Its outputs are checked against the host's on the same input, within the artifact's parity
  budgets, and its timings are marked emulated.
"""
from __future__ import annotations

import io
import json
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import numpy as np

from edge.device import RUNNER, runner_error
from edge.errors import EdgeError, ParityError, UserError

# Exit codes of the remote script itself (the runner uses 0, 1 and 2).
NO_TMP, NO_TAR, NOT_FOUND, SSH_FAILED = 97, 98, 127, 255


class Device(Protocol):
    label: str
    emulated: bool

    def check(self, artifact: Path) -> None: ...

    def run(self, artifact: Path, manifest: Path | None, options: list[str]) -> dict: ...


def parse(spec: str, python: str = "python3", ssh_options: tuple[str, ...] = (),
          key: str | None = None) -> Device:
    """`--device` text to a Device; UserError for anything else."""
    if spec == "pi-emu" or spec.startswith("pi-emu:"):
        suite = _piemu().suite_of(spec).name
        return PiEmu(label=_piemu().label(suite), suite=suite)
    if spec.startswith("ssh://"):
        return SSHDevice.from_url(spec, python, ssh_options, key)
    raise UserError(f"unknown --device {spec!r}; use ssh://user@host[:port], pi-emu or pi-emu:trixie")


def bundle(artifact: Path, manifest: Path | None, extra: dict[str, Path] | None = None) -> dict[str, Path]:
    """The files the device needs, by the name they get there."""
    files = {"runner.py": RUNNER, artifact.name: artifact}
    if manifest is not None:
        files["manifest.json"] = manifest
    return files | (extra or {})


def runner_args(artifact: Path, manifest: Path | None, options: list[str]) -> list[str]:
    """The runner's argv on the device; `--` keeps an artifact named -x.tflite from reading as an option."""
    return ["runner.py", *(["--manifest", "manifest.json"] if manifest else []), *options, "--", artifact.name]


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(code).name
    except ValueError:
        return f"signal {code}"


# ---------------------------------------------------------------- ssh

# Runs on the device under `sh -c`; its arguments are: python, then the runner's argv.
REMOTE_SCRIPT = r"""
py="$1"; shift
d=$(mktemp -d "${TMPDIR:-/tmp}/edge-bench.XXXXXX") || exit 97
trap 'cd /; rm -rf "$d"' EXIT
trap 'exit 129' HUP INT TERM
cd "$d" || exit 97
tar -xf - || exit 98
command -v "$py" >/dev/null 2>&1 || exit 127
"$py" "$@"
rc=$?
exit $rc
"""


@dataclass
class SSHDevice:
    host: str
    user: str | None = None
    port: int | None = None
    python: str = "python3"
    options: tuple[str, ...] = ()
    key: str | None = None
    emulated: bool = False
    timeout: float = 3600.0

    @classmethod
    def from_url(cls, url: str, python: str = "python3", options: tuple[str, ...] = (),
                 key: str | None = None) -> SSHDevice:
        try:
            u = urlsplit(url)
        except ValueError as e:  # "Invalid IPv6 URL": an unclosed [
            raise UserError(f"--device {url} is not of the form ssh://user@host[:port] ({e})") from None
        try:
            port = u.port
        except ValueError:
            raise UserError(f"--device {url}: the port is not a number from 1 to 65535; use "
                            "ssh://user@host[:port]") from None
        if port == 0:
            raise UserError(f"--device {url}: port 0 is not a port ssh can connect to; use 1 to 65535, or leave "
                            "it out for 22")
        if not u.hostname or u.path not in ("", "/") or u.query or u.password:
            raise UserError(f"--device {url} is not of the form ssh://user@host[:port]")
        if shutil.which("ssh") is None:
            raise UserError("--device ssh:// needs the ssh client, not found; install openssh-client")
        if key is not None and not Path(key).is_file():
            raise UserError(f"--ssh-key {key}: no such file")
        return cls(u.hostname, u.username, port, python, tuple(options), key)

    @property
    def label(self) -> str:
        who = f"{self.user}@" if self.user else ""
        return f"ssh://{who}{self.host}" + (f":{self.port}" if self.port else "")

    def ssh_command(self, remote: str) -> list[str]:
        cmd = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=15", "-o", "ServerAliveInterval=30"]
        for opt in self.options:
            cmd += ["-o", opt]
        if self.key:
            cmd += ["-i", self.key, "-o", "IdentitiesOnly=yes"]
        if self.port:
            cmd += ["-p", str(self.port)]
        if self.user:
            cmd += ["-l", self.user]
        return [*cmd, "--", self.host, remote]

    def check(self, artifact: Path) -> None:
        pass  # the device says what it cannot run

    def run(self, artifact: Path, manifest: Path | None, options: list[str]) -> dict:
        argv = [self.python, *runner_args(artifact, manifest, options)]
        remote = " ".join(shlex.quote(s) for s in ["sh", "-c", REMOTE_SCRIPT, "sh", *argv])
        try:
            proc = subprocess.run(self.ssh_command(remote), input=_tar(bundle(artifact, manifest)),
                                  capture_output=True, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            raise EdgeError(f"{self.label}: no answer within {self.timeout:.0f} s") from None
        stderr = proc.stderr.decode(errors="replace")
        if proc.returncode != 0:
            raise self._failure(proc.returncode, stderr, artifact)
        try:
            return json.loads(proc.stdout)
        except ValueError:
            raise EdgeError(f"{self.label}: the runner printed no JSON result") from None

    def _failure(self, code: int, stderr: str, artifact: Path) -> EdgeError:
        lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
        last = lines[-1] if lines else f"exit code {code}"
        where = f"{self.label}"
        if code == SSH_FAILED:
            port = ["-p", str(self.port)] if self.port else []
            try_ = shlex.join(["ssh", *port, f"{self.user + '@' if self.user else ''}{self.host}", "true"])
            return EdgeError(f"cannot reach {where}: {last.removeprefix('ssh: ')} "
                             f"(check the host, port, user and key; try: {try_})")
        if code == NOT_FOUND:
            return UserError(f"{where}: {self.python} not found on the device; pass --device-python PATH")
        if code == NO_TMP:
            return EdgeError(f"{where}: cannot make a temporary folder on the device ({last})")
        if code == NO_TAR:
            return EdgeError(f"{where}: unpacking the files on the device failed ({last}); is tar installed there?")
        if code > 128:
            return EdgeError(f"the runner crashed on {where} ({_signal_name(code - 128)}) "
                             f"while running {artifact.name}; run runner.py there by hand to see more")
        cls = UserError if code == 2 else EdgeError
        return cls(f"{where}: {runner_error(stderr, code)}")


def _tar(files: dict[str, Path]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, path in files.items():
            info = tar.gettarinfo(str(path), arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with open(path, "rb") as f:
                tar.addfile(info, f)
    return buf.getvalue()


# ---------------------------------------------------------------- emulated Pi

@dataclass
class PiEmu:
    """The runner inside the emulated arm64 root, checked against the host on the same input."""

    emulated: bool = True
    label: str = "pi-emu"
    suite: str = "bookworm"
    root: Path | None = None

    def __post_init__(self):
        if self.root is None:
            self.root = _piemu().cache_root(self.suite)

    def check(self, artifact: Path) -> None:
        piemu = _piemu()
        if not piemu.runs(artifact, self.suite):
            from edge.targets.base import target_of

            t = target_of(artifact)
            other = [piemu.label(s) for s, v in piemu.SUITES.items() if t is not None and t.runner_backend in v.backends]
            raise UserError(f"{self.label} holds the {' and '.join(piemu.SUITES[self.suite].backends)} runtimes; "
                            f"{artifact.name} needs {t.runtime if t else 'a runtime it does not have'}: "
                            + (f"use --device {other[0]}" if other else "bench it on the host or a real device"))
        if piemu.info(self.root) is None:
            raise UserError(f"the emulated Pi is not set up ({self.root}); run: edge device setup {self.label}")
        piemu.check_host()

    def run(self, artifact: Path, manifest: Path | None, options: list[str]) -> dict:
        piemu = _piemu()
        with tempfile.TemporaryDirectory(prefix="edge-pi-emu-") as host_tmp, \
                tempfile.TemporaryDirectory(prefix="edge-bench.", dir=self.root / "tmp") as dev_tmp:
            host_tmp, dev_tmp = Path(host_tmp), Path(dev_tmp)
            m = json.loads(manifest.read_text()) if manifest else {}
            x, source = sample_input(m)
            extra, io_args = {}, ["--save-output", "output.npy"]
            if x is not None:
                np.save(host_tmp / "input.npy", x)
                extra, io_args = {"input.npy": host_tmp / "input.npy"}, io_args + ["--input", "input.npy"]
            for name, src in bundle(artifact, manifest, extra).items():
                shutil.copyfile(src, dev_tmp / name)
            inside = Path("/") / dev_tmp.relative_to(self.root)
            argv = [f"{piemu.VENV}/bin/python", *runner_args(artifact, manifest, options + io_args)]
            proc = subprocess.run(piemu.chroot_command(self.root, ["/usr/bin/env", "-C", str(inside), *argv]),
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                if proc.returncode > 128 or proc.returncode < 0:
                    code = proc.returncode - 128 if proc.returncode > 128 else -proc.returncode
                    raise EdgeError(f"the runner crashed in the emulated Pi ({_signal_name(code)}) on {artifact.name}")
                cls = UserError if proc.returncode == 2 else EdgeError
                raise cls(f"pi-emu: {runner_error(proc.stderr, proc.returncode)}")
            result = json.loads(proc.stdout)
            emu_out = np.load(dev_tmp / "output.npy")
            host_out = host_output(artifact, manifest, host_tmp, options, x is not None)
        result["parity_vs_host"] = check_parity(host_out, emu_out, m, source)
        return result


def sample_input(m: dict) -> tuple[np.ndarray | None, str]:
    """One real photo preprocessed like the model's input (a held-out built-in image), or None
    (the runner's own random normal data, seed 0) when there is no manifest to say how."""
    from edge.data import BUILTIN_CALIB_DIR, load_image
    from edge.models.spec import Preprocess

    if not m.get("preprocess"):
        return None, "random normal, seed 0"
    shape = m["input"]["shape"]
    p = m["preprocess"]
    pre = Preprocess(int(p["resize"]), int(p["crop"]), tuple(p["mean"]), tuple(p["std"]))
    x = load_image(BUILTIN_CALIB_DIR / "chelsea.jpg", pre)[None]
    n, c, h, w = (shape[0], shape[3], shape[1], shape[2]) if m["input"].get("layout") == "NHWC" else shape
    if x.shape != (n, c, h, w):
        return None, "random normal, seed 0"
    return x.astype(np.float32), "chelsea.jpg (built-in, held out of calibration)"


def host_output(artifact: Path, manifest: Path | None, tmp: Path, options: list[str], has_input: bool) -> np.ndarray:
    """The same artifact's output on the host, for the same input, by the same runner."""
    out = tmp / "host_output.npy"
    passed = [o for k in ("--input-shape", "--backend") if k in options for o in options[options.index(k):][:2]]
    cmd = [sys.executable, str(RUNNER), "--runs", "1", "--warmup", "0", *passed,
           "--save-output", str(out), *(["--input", str(tmp / "input.npy")] if has_input else [])]
    if manifest is not None:
        cmd += ["--manifest", str(manifest)]
    cmd += ["--", str(artifact)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise EdgeError(f"the host run of {artifact.name} failed: {runner_error(proc.stderr, proc.returncode)}")
    return np.load(out)


def check_parity(host: np.ndarray, emulated: np.ndarray, m: dict, source: str) -> dict:
    """The emulated output against the host's, within the artifact's own parity budget (the
    one its build passed; without a manifest, the fp32 budget's cosine): ParityError if not."""
    from edge.parity import compare
    from edge.precisions import PRECISIONS

    precision = m.get("precision", "fp32")
    budget = dict((m.get("parity") or {}).get("budget") or PRECISIONS.get(precision).budget("classification"))
    if not m:
        budget = {"min_cosine": PRECISIONS.get("fp32").budget("classification")["min_cosine"]}
    budget.pop("max_top1_drop", None)  # no labels here
    report = compare(host.reshape(len(host), -1), emulated.reshape(len(emulated), -1), precision, budget,
                     f"{source}: pi-emu against the host")
    if not report.passed:
        raise ParityError(f"pi-emu outputs differ from the host's: {'; '.join(report.failures)}")
    return report.to_json()


def _piemu():
    from edge.device import piemu  # its host checks are only needed for --device pi-emu

    return piemu
