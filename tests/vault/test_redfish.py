"""Vault's Redfish driver against real Redfish services: sushy-emulator BMCs
(fake driver, htpasswd auth), nodes driven in parallel with bounded waits; a
BMC's password changed through Redfish's AccountService (the emulator with
one added, ``volt/bench/bmc_accounts.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sushy
from support.sushy import Bmc

from volt.up.nats_server import free_port
from volt.vault.redfish import BmcError, RedfishBmc


@pytest.fixture(scope="module")
def bmcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Bmc]]:
    root = tmp_path_factory.mktemp("bmcs")
    with Bmc(root / "a", systems=["a-1", "a-2"]) as a, Bmc(root / "b", systems=["b-1"]) as b:
        yield [a, b]


def _plain(bmc: Bmc) -> sushy.Sushy:
    """sushy itself, to check what the driver did."""
    return sushy.Sushy(bmc.url + "/redfish/v1", auth=sushy.auth.BasicAuth(
        username=bmc.username, password=bmc.password))


def driver(bmc: Bmc, password: str | None = None) -> RedfishBmc:
    return RedfishBmc(bmc.url, bmc.username, password or bmc.password)


def test_registration_finds_the_systems_and_what_they_can_do(bmcs: list[Bmc]) -> None:
    a = driver(bmcs[0])
    assert sorted(a.systems()) == sorted(bmcs[0].systems.values())
    facts = a.facts(bmcs[0].systems["a-1"])
    assert facts.name == "a-1"
    assert facts.power_state == "PowerState.OFF" or facts.power_state.endswith("Off")
    assert {"Cd", "Pxe"} <= set(facts.boot_sources)
    assert facts.virtual_media


def test_bad_credentials_an_absent_bmc_and_an_unknown_system_are_told_apart(
        bmcs: list[Bmc]) -> None:
    with pytest.raises(BmcError) as refused:
        driver(bmcs[0], password="not-the-password").systems()
    assert refused.value.code == "unauthorized"
    with pytest.raises(BmcError) as absent:
        RedfishBmc(f"http://127.0.0.1:{free_port()}", "admin", "x").systems()
    assert absent.value.code == "unreachable"
    with pytest.raises(BmcError) as unknown:
        driver(bmcs[0]).facts("00000000-0000-0000-0000-000000000000")
    assert unknown.value.code == "not_found"


def test_nodes_provision_in_parallel_then_clean(bmcs: list[Bmc], image_url: str) -> None:
    nodes = [(bmc, system_id) for bmc in bmcs for system_id in bmc.systems.values()]

    def provision(node: tuple[Bmc, str]) -> str:
        bmc, system_id = node
        d = driver(bmc)
        d.power(system_id, on=False)
        d.wait_power(system_id, on=False, timeout_s=20)
        way = d.boot_from_image(system_id, image_url)
        d.power(system_id, on=True)
        d.wait_power(system_id, on=True, timeout_s=20)  # the emulator takes 1-11 s
        return way

    with ThreadPoolExecutor(len(nodes)) as pool:
        assert list(pool.map(provision, nodes)) == ["virtual_media"] * len(nodes)
    for bmc, system_id in nodes:
        system = _plain(bmc).get_system(
            f"/redfish/v1/Systems/{system_id}")
        assert system.power_state == sushy.PowerState.ON
        assert system.boot.target == sushy.BootSource.CD
        media = system.virtual_media.get_member(system.virtual_media.members_identities[0])
        assert media.inserted
        assert media.image == image_url

    bmc, system_id = nodes[0]
    report = driver(bmc).clean(system_id, erase=True)
    outcomes = {step.step: step.outcome for step in report.steps}
    # The emulator offers neither drives nor a BIOS resource: recorded, not skipped.
    assert outcomes["secure_erase"].startswith("not supported")
    assert outcomes["bios_reset"].startswith("not supported")
    assert outcomes["boot_override_cleared"] == "done"
    system = _plain(bmc).get_system(f"/redfish/v1/Systems/{system_id}")
    media = system.virtual_media.get_member(system.virtual_media.members_identities[0])
    assert not media.inserted
    # The emulator keeps only the boot device (it reports every override as
    # Continuous), so the disk being the target is what can be checked.
    assert system.boot.target == sushy.BootSource.HDD


def test_a_power_change_that_never_lands_times_out(bmcs: list[Bmc]) -> None:
    bmc = bmcs[1]
    system_id = bmc.systems["b-1"]
    d = driver(bmc)
    state = d.power_state(system_id)
    with pytest.raises(BmcError) as late:
        # Nothing asked the power to change: waiting for the other state must end.
        d.wait_power(system_id, on=(state == "off"), timeout_s=1)
    assert late.value.code == "timeout"




def test_a_bmc_with_an_account_service_takes_a_new_password(tmp_path: Path,
                                                            bmcs: list[Bmc]) -> None:
    with Bmc(tmp_path / "accounts", systems=["c-1"], accounts=True) as bmc:
        assert driver(bmc).rotate_password(bmc.username, "the-new-one") == "done"
        assert not bmc.accepts(bmc.password)  # the old password no longer logs in
        assert bmc.accepts("the-new-one")
        assert driver(bmc, "the-new-one").systems() == list(bmc.systems.values())
        assert driver(bmc, "the-new-one").rotate_password("nobody", "x") == \
            "not supported: the BMC lists no account nobody"
    # sushy-emulator itself offers none: said plainly, nothing changed.
    assert driver(bmcs[1]).rotate_password(bmcs[1].username, "x") == \
        "not supported: the BMC has no AccountService"
    assert bmcs[1].accepts(bmcs[1].password)
