"""An emulated Raspberry Pi: an arm64 Debian root that runs under QEMU user-mode emulation
through binfmt_misc, with aarch64 builds of the device runtimes in a venv inside it. Two roots:

- `pi-emu`: Bookworm, the base of Raspberry Pi OS 12, Python 3.11: ai-edge-litert, onnxruntime, numpy;
- `pi-emu:trixie`: Trixie, the base of Raspberry Pi OS 13, Python 3.13: the same, plus
  executorch-numpy-runtime (ExecuTorch's torch-free runtime, which needs Python >= 3.12).

    edge device setup pi-emu          # once, as root: debootstrap (3-8 min) + pip (~1 min), cached
    edge device setup pi-emu:trixie
    edge bench out/m --device pi-emu:trixie

It proves that an artifact, the on-device runner and the ARM builds of the runtimes work
together, and that the outputs match the host's. Its timings are emulated (QEMU runs arm64 code
at a few hundred times below native speed) and say nothing about a real Pi's speed.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from edge import manifest as mf
from edge.errors import EdgeError, UserError

log = logging.getLogger("edge.device")

MIRROR = "http://deb.debian.org/debian"


@dataclass(frozen=True)
class Suite:
    name: str  # the Debian suite
    python: str  # its python3, for the wheels' tags
    packages: tuple[str, ...]  # pinned as in the host's requirements (same releases on both sides)
    backends: tuple[str, ...]  # the on-device runner's backends whose runtimes the root holds
    about: str


RUNTIMES = ("ai-edge-litert==2.3.0", "onnxruntime==1.32.0", "numpy==2.4.6")
SUITES = {
    "bookworm": Suite("bookworm", "3.11", RUNTIMES, ("tflite", "onnx"), "Raspberry Pi OS 12's base, Python 3.11"),
    # ExecuTorch's torch-free runtime needs Python >= 3.12: a Trixie-based Raspberry Pi OS
    "trixie": Suite("trixie", "3.13", (*RUNTIMES, "executorch-numpy-runtime==1.4.0"), ("tflite", "onnx", "pte"),
                    "Raspberry Pi OS 13's base, Python 3.13"),
}
DEFAULT = "bookworm"
SUITE = DEFAULT
PACKAGES = SUITES[DEFAULT].packages
VENV = "/opt/edge-venv"
STAMP = ".edge-pi-emu.json"
BINFMT = Path("/proc/sys/fs/binfmt_misc")
BINFMT_CONF = Path("/usr/lib/binfmt.d/qemu-aarch64.conf")
QEMU = Path("/usr/bin/qemu-aarch64-static")
QEMU_CPU = "cortex-a76"  # a Raspberry Pi 5's cores (see chroot_command)
# The default root's backends (no torch in either root: .ptl is benchmarked on the host or a real Pi)
BACKENDS = SUITES[DEFAULT].backends


def suite_of(device: str) -> Suite:
    """`pi-emu` -> Bookworm, `pi-emu:SUITE` -> that suite; UserError for another name."""
    name = device.partition(":")[2] or DEFAULT
    if name not in SUITES:
        raise UserError(f"unknown emulated Pi {device!r}; use {' or '.join(label(s) for s in SUITES)}")
    return SUITES[name]


def label(suite: str) -> str:
    return "pi-emu" if suite == DEFAULT else f"pi-emu:{suite}"


def runs(artifact: Path, suite: str = DEFAULT) -> bool:
    """Can this emulated Pi run this artifact (its target's runtime is in the root)?"""
    from edge.targets.base import target_of

    t = target_of(artifact)
    return t is not None and t.runner_backend in SUITES[suite].backends
FIX = "apt-get install qemu-user-static debootstrap (or `make sysdeps`)"


def cache_root(suite: str = DEFAULT) -> Path:
    """Where the root lives: $EDGE_PI_EMU_ROOT, else ~/.cache/edge/pi-emu (XDG_CACHE_HOME); a
    suite other than the default gets `-SUITE` after that name."""
    if os.environ.get("EDGE_PI_EMU_ROOT"):
        root = Path(os.environ["EDGE_PI_EMU_ROOT"])
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edge" / "pi-emu"
    return root if suite == DEFAULT else root.with_name(f"{root.name}-{suite}")


def info(root: Path | None = None) -> dict | None:
    """The stamp of a finished root (suite, packages, versions, date), or None if not set up."""
    stamp = (root or cache_root()) / STAMP
    try:
        return json.loads(stamp.read_text())
    except (OSError, ValueError):
        return None


def check_host(needs_debootstrap: bool = False) -> None:
    """Root, QEMU and binfmt_misc with the aarch64 handler, or a one-line UserError. Mounts
    binfmt_misc and registers Debian's qemu-aarch64 handler when they are missing."""
    if os.geteuid() != 0:
        raise UserError("the emulated Pi needs root (chroot, mounts, binfmt_misc); run edge as root or with sudo")
    missing = [t for t, ok in (("qemu-aarch64-static", QEMU.is_file()),
                               ("debootstrap", not needs_debootstrap or shutil.which("debootstrap")),
                               ("chroot", shutil.which("chroot")), ("unshare", shutil.which("unshare"))) if not ok]
    if missing:
        raise UserError(f"the emulated Pi needs {', '.join(missing)}, not found; install with: {FIX}")
    if not (BINFMT / "register").exists():
        _run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)],
             "binfmt_misc is not available (cannot mount /proc/sys/fs/binfmt_misc); "
             "a container needs it from the host: modprobe binfmt_misc there")
    handler = BINFMT / "qemu-aarch64"
    if not handler.exists():
        if not BINFMT_CONF.is_file():
            raise UserError(f"no binfmt rule for arm64 ({BINFMT_CONF} is missing); install with: {FIX}")
        try:
            (BINFMT / "register").write_text(BINFMT_CONF.read_text().strip() + "\n")
        except OSError as e:
            raise UserError(f"cannot register QEMU with binfmt_misc ({e.strerror}); "
                            f"a container needs it registered by the host") from None
    if (handler.read_text().splitlines() or [""])[0].strip() != "enabled":
        raise UserError(f"the binfmt_misc handler {handler} is disabled; enable it: echo 1 > {handler}")


def setup(force: bool = False, suite: str = DEFAULT) -> Path:
    """Build the root once (cached); returns its path. Raises UserError for a host that cannot."""
    s = SUITES[suite]
    SUITE, PACKAGES = s.name, s.packages  # noqa: N806 - this root's
    root = cache_root(suite)
    if info(root) and not force:
        _cpu_lists(root)  # roots made before edge wrote them
        log.info("pi-emu: %s is set up already (--force rebuilds it)", root)
        return root
    check_host(needs_debootstrap=True)
    partial = root.with_name(root.name + ".partial")
    _umount_below(partial)
    if not (partial / ".debootstrap-done").exists():  # none yet, or an interrupted debootstrap: start over
        shutil.rmtree(partial, ignore_errors=True)
        partial.parent.mkdir(parents=True, exist_ok=True)
        log.info("pi-emu: debootstrap %s arm64 into %s (3-8 minutes)", SUITE, partial)
        _run(["debootstrap", "--variant=minbase", "--arch=arm64", "--include=python3,python3-venv",
              SUITE, str(partial), MIRROR], f"debootstrap of {SUITE} arm64 failed")
        (partial / ".debootstrap-done").touch()
    _cpu_lists(partial)
    # The wheels come through the host's pip (its index, mirrors and certificates) and are
    # installed offline inside, so the root needs no network or CA set-up of its own.
    wheels = partial / "tmp" / "edge-wheels"
    shutil.rmtree(wheels, ignore_errors=True)
    log.info("pi-emu: aarch64 wheels of %s, then a venv in the root", ", ".join(PACKAGES))
    platforms = [a for p in ("manylinux_2_28_aarch64", "manylinux_2_27_aarch64", "manylinux2014_aarch64")
                 for a in ("--platform", p)]
    _run([sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--python-version", s.python,
          "--implementation", "cp", *platforms, "-d", str(wheels), *PACKAGES],
         "downloading the aarch64 wheels failed (is the package index reachable?)")
    _run(chroot_command(partial, ["/usr/bin/python3", "-m", "venv", "--clear", VENV]),
         "creating the venv in the root failed")
    _run(chroot_command(partial, [f"{VENV}/bin/pip", "install", "--quiet", "--disable-pip-version-check",
                                  "--no-index", "--find-links", "/tmp/edge-wheels", *PACKAGES]),
         "pip install in the emulated root failed")
    shutil.rmtree(wheels)
    dists = [p.split("==")[0] for p in PACKAGES]
    versions = subprocess.run(chroot_command(partial, [f"{VENV}/bin/python", "-c", _VERSIONS % (dists,)]),
                              capture_output=True, text=True, check=True).stdout
    stamp = {"suite": SUITE, "arch": "arm64", "packages": list(PACKAGES), "versions": json.loads(versions),
             "date": mf.now()}
    (partial / STAMP).write_text(json.dumps(stamp, indent=2) + "\n")
    if root.exists():
        shutil.rmtree(root)
    partial.rename(root)
    log.info("pi-emu: ready in %s", root)
    return root


_VERSIONS = ("import json, platform, importlib.metadata as m; print(json.dumps({'python': platform.python_version(),"
             " 'machine': platform.machine(), **{d: m.version(d) for d in %r}}))")


def _cpu_lists(root: Path) -> None:
    """/sys/devices/system/cpu/{possible,present} inside the root, as plain files: XNNPACK's cpuinfo
    (in executorch-numpy-runtime) refuses to start without them ("Backend XnnpackBackend is not
    available"), and the host's /sys is not mounted (see chroot_command)."""
    cpu = root / "sys" / "devices" / "system" / "cpu"
    cpu.mkdir(parents=True, exist_ok=True)
    for name in ("possible", "present"):
        (cpu / name).write_text(f"0-{max(1, os.cpu_count() or 1) - 1}\n")


def chroot_command(root: Path, argv: list[str]) -> list[str]:
    """argv run inside `root` in a private mount namespace with /proc and /dev mounted (the
    runtimes read /proc/cpuinfo); the mounts vanish with the namespace. No string is
    interpreted by a shell: the paths reach `sh -c` as positional arguments.
    The host's /sys is left out on purpose: onnxruntime's cpuinfo reads the x86 host's CPU
    topology there and segfaults under QEMU (onnxruntime 1.20-1.32 with QEMU 7.2)."""
    script = ('r="$1"; shift; mount -t proc proc "$r/proc" && '
              'mount --rbind /dev "$r/dev" && exec chroot "$r" "$@"')
    # A clean environment: the host's pip/python settings (find-links, certificates, PYTHONPATH)
    # point at files the root does not have.
    # QEMU_CPU: a Raspberry Pi 5's Cortex-A76, not QEMU's default "max" model, which offers every
    # arm64 extension: XNNPACK then picks int8 kernels that QEMU 7.2 runs wrongly (a tiny int8 .pte
    # gave an output at -1 dB SQNR against the host; as cortex-a72 or cortex-a76, bit-identical).
    env = ["env", "-i", "PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/root", "LANG=C.UTF-8", "TF_CPP_MIN_LOG_LEVEL=2",
           f"QEMU_CPU={QEMU_CPU}"]
    return ["unshare", "--mount", "--propagation", "private", "--fork", "sh", "-c", script, "sh", str(root),
            *env, *argv]


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        raise EdgeError(f"{what}: {lines[-1] if lines else f'exit code {proc.returncode}'}")


def _umount_below(path: Path) -> None:
    mounts = Path("/proc/mounts").read_text().splitlines()
    for target in sorted((m.split()[1] for m in mounts if m.split()[1].startswith(str(path))), reverse=True):
        subprocess.run(["umount", "-l", target], capture_output=True)
