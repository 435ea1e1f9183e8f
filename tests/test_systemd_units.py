"""The systemd units parse, stay hardened, and run the right service."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = sorted((Path(__file__).parent.parent / "systemd").glob("*.service"))


def test_one_unit_per_service() -> None:
    assert [u.name for u in UNITS] == ["volt-agent.service", "volt-api.service",
                                       "volt-redfish-proxy.service", "volt-scheduler.service"]


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_units_are_hardened(unit: Path) -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(unit)
    service = parser["Service"]
    assert service["ExecStart"].endswith(f"volt {unit.stem.removeprefix('volt-')} "
                                         "--config /etc/volt/volt.toml")
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict",
                       "ProtectHome": "yes", "PrivateTmp": "yes", "CapabilityBoundingSet": "",
                       "User": "volt"}.items():
        assert service[key] == value, key


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_systemd_accepts_the_unit(unit: Path) -> None:
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                            capture_output=True, text=True, check=False)
    # The only acceptable complaint: the binary is not installed on this machine.
    problems = [line for line in result.stderr.splitlines()
                if line.strip() and "/opt/volt/venv/bin/volt" not in line]
    assert problems == []
