"""Vault's Talos configs, checked by Talos itself: ``talosctl`` of the pinned
version, built from the Go module (``tests/support/build-talosctl``), validates
every node's config for bare metal (warnings count as errors), takes Volt's
secrets bundle as its own, and reads the talosconfig. The bundle's shape is
compared with what ``talosctl gen secrets`` makes."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from support.go_built import built
from support.requirements import require

from volt.vault.talos import (
    KUBERNETES,
    control_planes,
    generate_secrets,
    machine_config,
    talosconfig,
    to_yaml,
)

TALOS = "v1.12.1"
BUILD_SCRIPT = Path(__file__).parents[1] / "support" / "build-talosctl"
TOKEN = re.compile(r"^[a-z0-9]{6}\.[a-z0-9]{16}$")


@pytest.fixture(scope="module")
def talosctl() -> Path:
    if shutil.which("go") is None:
        require("Go is not installed: talosctl is built from source")
    return built(BUILD_SCRIPT) / "talosctl"


def run(talosctl: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(talosctl), *args], capture_output=True, text=True, timeout=120,
                          check=False)


def validate(talosctl: Path, path: Path) -> subprocess.CompletedProcess[str]:
    return run(talosctl, "validate", "--config", str(path), "--mode", "metal", "--strict")


def shape(bundle: dict[str, Any]) -> dict[str, Any]:
    """What must match ``talosctl gen secrets``: keys, and per certificate its
    PEM labels, key type, subject, CA flag, usages and lifetime."""
    out: dict[str, Any] = {section: sorted(bundle[section]) for section in bundle}
    for name, pair in bundle["certs"].items():
        entry: dict[str, Any] = {"fields": sorted(pair)}
        key_pem = base64.b64decode(pair["key"])
        entry["key_label"] = key_pem.splitlines()[0].decode()
        if "crt" in pair:
            cert = x509.load_pem_x509_certificate(base64.b64decode(pair["crt"]))
            usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
            entry |= {
                "subject": cert.subject.rfc4514_string(),
                "key": type(cert.public_key()).__name__.lstrip("_"),
                "ca": cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca,
                "sign": (usage.digital_signature, usage.key_cert_sign),
                "eku": sorted(o.dotted_string for o in cert.extensions.get_extension_for_class(
                    x509.ExtendedKeyUsage).value),
                "days": (cert.not_valid_after_utc - cert.not_valid_before_utc).days,
            }
        else:
            entry["key"] = type(serialization.load_pem_private_key(key_pem, None)).__name__
        out[name] = entry
    return out


def test_the_secrets_bundle_has_the_shape_talosctl_makes(talosctl: Path,
                                                         tmp_path: Path) -> None:
    made = run(talosctl, "gen", "secrets", "-o", str(tmp_path / "theirs.yaml"))
    assert made.returncode == 0, made.stderr
    theirs = yaml.safe_load((tmp_path / "theirs.yaml").read_text())
    ours = generate_secrets()
    assert shape(ours) == shape(theirs)
    assert TOKEN.match(ours["secrets"]["bootstraptoken"])
    assert TOKEN.match(ours["trustdinfo"]["token"])
    for value in (ours["cluster"]["secret"], ours["secrets"]["secretboxencryptionsecret"]):
        assert len(base64.b64decode(value)) == 32
    assert len(base64.urlsafe_b64decode(ours["cluster"]["id"])) == 32

    # Talos takes Volt's bundle as its own: the config it generates from it
    # carries Volt's cluster id and CAs.
    (tmp_path / "ours.yaml").write_text(yaml.safe_dump(ours))
    generated = run(talosctl, "gen", "config", "r1", "https://r1-n1:6443", "--with-secrets",
                    str(tmp_path / "ours.yaml"), "-o", str(tmp_path / "gen"))
    assert generated.returncode == 0, generated.stderr
    config = next(yaml.safe_load_all((tmp_path / "gen" / "controlplane.yaml").read_text()))
    assert config["cluster"]["id"] == ours["cluster"]["id"]
    assert config["cluster"]["ca"] == ours["certs"]["k8s"]
    assert config["machine"]["ca"] == ours["certs"]["os"]


@pytest.mark.parametrize("size", [1, 2, 4])
def test_every_node_config_is_valid_for_bare_metal(talosctl: Path, tmp_path: Path,
                                                   size: int) -> None:
    bundle = generate_secrets()
    nodes = [f"r1-n{i}" for i in range(1, size + 1)]
    planes = control_planes(nodes)
    assert len(planes) == (3 if size >= 3 else 1)
    for node in nodes:
        documents = machine_config(bundle, node=node, control_plane=node in planes,
                                   cluster_name="r1", endpoint="https://r1-n1:6443",
                                   install_disk="/dev/nvme0n1", talos_version=TALOS)
        path = tmp_path / f"{node}.yaml"
        path.write_text(to_yaml(documents))
        result = validate(talosctl, path)
        assert result.returncode == 0, (node, result.stdout, result.stderr)
        config, hostname, *volumes = documents
        assert config["machine"]["type"] == ("controlplane" if node in planes else "worker")
        assert hostname["hostname"] == node
        assert [(v["name"], v["encryption"]["keys"][0]) for v in volumes] == [
            ("STATE", {"slot": 0, "tpm": {}}), ("EPHEMERAL", {"slot": 0, "tpm": {}})]
        assert config["machine"]["kubelet"]["image"].endswith(KUBERNETES[TALOS])
        if node not in planes:  # a worker holds no CA key
            assert config["machine"]["ca"]["key"] == ""
            assert config["cluster"]["ca"]["key"] == ""
            assert "etcd" not in config["cluster"]


def test_talos_refuses_a_broken_config(talosctl: Path, tmp_path: Path) -> None:
    """The validator is real: the same config with a bad endpoint fails."""
    documents = machine_config(generate_secrets(), node="r1-n1", control_plane=True,
                               cluster_name="r1", endpoint="not a url",
                               install_disk="/dev/nvme0n1", talos_version=TALOS)
    path = tmp_path / "broken.yaml"
    path.write_text(to_yaml(documents))
    result = validate(talosctl, path)
    assert result.returncode != 0
    assert "endpoint" in (result.stdout + result.stderr).lower()


def test_the_talosconfig_reaches_the_nodes_as_os_admin(talosctl: Path, tmp_path: Path) -> None:
    bundle = generate_secrets()
    path = tmp_path / "talosconfig"
    path.write_text(yaml.safe_dump(talosconfig(bundle, context="r1",
                                               endpoints=["r1-n1", "r1-n2"])))
    info = run(talosctl, "--talosconfig", str(path), "config", "info")
    assert info.returncode == 0, info.stderr
    assert "os:admin" in info.stdout
    assert "r1-n1, r1-n2" in info.stdout
    client = x509.load_pem_x509_certificate(base64.b64decode(
        yaml.safe_load(path.read_text())["contexts"]["r1"]["crt"]))
    ca = x509.load_pem_x509_certificate(base64.b64decode(bundle["certs"]["os"]["crt"]))
    client.verify_directly_issued_by(ca)
