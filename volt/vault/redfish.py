"""A node's BMC, over Redfish, through ``sushy`` (OpenStack Ironic's Redfish library).

The narrow interface Vault drives a bare-metal node with: check a BMC on
registration (reachable, the credentials work, the system exists), power it,
boot it once from virtual media (or PXE where a BMC has none), and clean it
(secure erase, BIOS reset) and change its own password (AccountService) —
saying plainly "not supported" where a BMC offers no such action instead of
pretending. ``sushy`` is synchronous: callers run these methods in a thread.
Its exceptions are translated here, at the boundary::

    BmcError(code)
      unreachable     the BMC did not answer (connection refused, timeout)
      unauthorized    the credentials were refused (401/403)
      not_found       no such system on this BMC
      refused         the BMC answered an action with an error
      timeout         a bounded wait ran out (a power change that never landed)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import sushy
from sushy import exceptions as sushy_errors

T = TypeVar("T")
POWER_POLL_S = 0.5


class BmcError(Exception):
    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class SystemFacts:
    """What registration learns of a node's system."""

    system_id: str
    name: str
    power_state: str
    boot_sources: list[str]
    virtual_media: bool
    manufacturer: str = ""
    model: str = ""
    serial: str = ""


@dataclass(frozen=True, slots=True)
class CleaningStep:
    step: str
    outcome: str
    """``done`` or ``not supported: <why>`` (recorded, never silently skipped)."""


@dataclass(slots=True)
class CleaningReport:
    steps: list[CleaningStep] = field(default_factory=list)


def _translated(what: str, call: Callable[[], T]) -> T:
    try:
        return call()
    except sushy_errors.AccessError as exc:
        raise BmcError(f"{what}: the BMC refused the credentials", "unauthorized") from exc
    except sushy_errors.ResourceNotFoundError as exc:
        raise BmcError(f"{what}: not found on the BMC", "not_found") from exc
    except sushy_errors.ConnectionError as exc:
        raise BmcError(f"{what}: the BMC did not answer", "unreachable") from exc
    except sushy_errors.HTTPError as exc:
        raise BmcError(f"{what}: the BMC answered {exc.status_code}", "refused") from exc
    except sushy_errors.SushyError as exc:
        raise BmcError(f"{what}: {type(exc).__name__}", "refused") from exc


class RedfishBmc:
    def __init__(self, url: str, username: str, password: str, *,
                 timeout_s: float = 10.0, verify: bool = True,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.url = url.rstrip("/")
        self._sleep = sleep
        self._clock = clock
        # Basic auth on every call: a BMC's session service is not always there
        # (and sushy's default would log in through it first).
        self._root: Any = _translated("connecting", lambda: sushy.Sushy(
            self.url + "/redfish/v1",
            auth=sushy.auth.BasicAuth(username=username, password=password), verify=verify,
            # A BMC's 5xx is retried, but briefly: probing what a BMC lacks
            # (storage, BIOS) must not stall a node for sushy's default 30 s.
            server_side_retries=2, server_side_retries_delay=0.5,
            # Every call bounded: a BMC that hangs must not hold a node's step.
            read_timeout=timeout_s, connect_timeout=min(timeout_s, 5.0)))
        self.timeout_s = timeout_s

    def systems(self) -> list[str]:
        """The Redfish ids of the BMC's systems."""
        members = _translated("listing systems",
                              lambda: self._root.get_system_collection().members_identities)
        return [path.rstrip("/").rsplit("/", 1)[-1] for path in members]

    def _system(self, system_id: str) -> Any:
        return _translated(f"system {system_id}", lambda: self._root.get_system(
            f"/redfish/v1/Systems/{system_id}"))

    def facts(self, system_id: str) -> SystemFacts:
        system = self._system(system_id)
        sources = _translated("boot sources", system.get_allowed_system_boot_source_values)
        return SystemFacts(
            system_id=system_id, name=system.name or "", power_state=str(system.power_state),
            boot_sources=sorted(str(s.value) for s in sources),
            virtual_media=bool(self._media(system)), manufacturer=system.manufacturer or "",
            model=system.model or "", serial=system.serial_number or "")

    # --- power ---------------------------------------------------------------------

    def power_state(self, system_id: str) -> str:
        system = self._system(system_id)
        return "on" if system.power_state == sushy.PowerState.ON else "off"

    def power(self, system_id: str, on: bool) -> None:
        """Ask for the power state (forced off: a node being provisioned or
        cleaned has nothing to shut down gracefully)."""
        system = self._system(system_id)
        want = sushy.ResetType.ON if on else sushy.ResetType.FORCE_OFF
        if (system.power_state == sushy.PowerState.ON) == on:
            return
        _translated(f"power {'on' if on else 'off'}", lambda: system.reset_system(want))

    def wait_power(self, system_id: str, on: bool, timeout_s: float) -> None:
        deadline = self._clock() + timeout_s
        want = "on" if on else "off"
        while self.power_state(system_id) != want:
            if self._clock() > deadline:
                raise BmcError(f"system {system_id} not powered {want} within {timeout_s:.0f}s",
                               "timeout")
            self._sleep(POWER_POLL_S)

    # --- booting ---------------------------------------------------------------------

    def _media(self, system: Any) -> list[Any]:
        try:
            collection = system.virtual_media
        except (sushy_errors.MissingAttributeError, sushy_errors.SushyError):
            return []
        return [m for m in collection.get_members()
                if any(str(t.value) in ("CD", "DVD") for t in (m.media_types or []))]

    def boot_from_image(self, system_id: str, image_url: str) -> str:
        """Boot next from ``image_url`` by virtual media, or PXE where the BMC
        has none. Returns the way chosen: ``virtual_media`` or ``pxe``."""
        system = self._system(system_id)
        media = self._media(system)
        if media:
            device = media[0]
            _translated("inserting the image", lambda: device.insert_media(
                image_url, inserted=True, write_protected=True))
            source = sushy.BootSource.CD
        else:
            source = sushy.BootSource.PXE
        _translated("setting the next boot", lambda: system.set_system_boot_options(
            source, enabled=sushy.BootSourceOverrideEnabled.ONCE))
        return "virtual_media" if media else "pxe"

    def clear_boot(self, system_id: str) -> None:
        """No boot override and no image inserted: the node boots from its disk."""
        system = self._system(system_id)
        for device in self._media(system):
            if device.inserted:
                _translated("ejecting the image", device.eject_media)
        _translated("clearing the boot override", lambda: system.set_system_boot_options(
            sushy.BootSource.HDD, enabled=sushy.BootSourceOverrideEnabled.DISABLED))

    # --- cleaning ---------------------------------------------------------------------

    def clean(self, system_id: str, *, erase: bool) -> CleaningReport:
        """Erase the disks (when asked), reset BIOS settings, clear the boot
        override; each step's outcome is recorded."""
        system = self._system(system_id)
        report = CleaningReport()
        if erase:
            report.steps.append(CleaningStep("secure_erase", self._erase(system)))
        report.steps.append(CleaningStep("bios_reset", self._reset_bios(system)))
        self.clear_boot(system_id)
        report.steps.append(CleaningStep("boot_override_cleared", "done"))
        return report

    def _erase(self, system: Any) -> str:
        try:
            storages = system.storage.get_members()
        except (sushy_errors.MissingAttributeError, sushy_errors.SushyError) as exc:
            return f"not supported: the BMC lists no storage ({type(exc).__name__})"
        drives = [drive for storage in storages for drive in storage.drives]
        if not drives:
            return "not supported: no drives listed"
        for drive in drives:
            target = (drive.json.get("Actions", {}).get("#Drive.SecureErase") or {}).get("target")
            if not target:
                return f"not supported: drive {drive.identity} offers no Drive.SecureErase"
            try:
                self._post_action(f"erasing {drive.identity}", str(target))
            except BmcError as exc:
                return f"failed: {exc}"
        return "done"

    def _post_action(self, what: str, target: str) -> None:
        # sushy 5 has no method for some DMTF actions (Drive.SecureErase):
        # post them on the library's own connection (its one private reach,
        # kept here).
        connection: Any = self._root._conn
        _translated(what, lambda: connection.post(target, data={}))

    def _reset_bios(self, system: Any) -> str:
        try:
            bios = system.bios
        except (sushy_errors.MissingAttributeError, sushy_errors.SushyError):
            return "not supported: the BMC has no BIOS resource"
        try:
            _translated("resetting the BIOS", bios.reset_bios)
        except BmcError as exc:
            return f"not supported: {exc}"
        return "done"


    # --- the BMC's own credentials ----------------------------------------------------

    def rotate_password(self, username: str, password: str) -> str:
        """Set the BMC account ``username``'s password (DMTF's AccountService:
        ``PATCH`` of the ``ManagerAccount``'s ``Password``). ``done``, or ``not
        supported: <why>`` where the BMC offers no way. This handle's own
        login is the old password's: connect again to go on."""
        # sushy 5 has no AccountService resource: read it on the library's
        # own connection, as for Drive.SecureErase.
        connection: Any = self._root._conn

        def get(path: str) -> dict[str, Any]:
            body: dict[str, Any] = _translated(f"reading {path}",
                                               lambda: connection.get(path).json())
            return body

        service = (get("/redfish/v1/").get("AccountService") or {}).get("@odata.id")
        if not service:
            return "not supported: the BMC has no AccountService"
        listing = (get(str(service)).get("Accounts") or {}).get("@odata.id")
        if not listing:
            return "not supported: the BMC's AccountService lists no accounts"
        for member in get(str(listing)).get("Members", []):
            path = str(member.get("@odata.id", ""))
            if path and get(path).get("UserName") == username:
                _translated("setting the BMC password", partial(
                    connection.patch, path, data={"Password": password}))
                return "done"
        return f"not supported: the BMC lists no account {username}"


Connect = Callable[[str, str, str, bool], RedfishBmc]
"""(Redfish URL, user, password, verify TLS) -> the BMC: how Vault reaches one."""


def connect_bmc(url: str, username: str, password: str, verify_tls: bool,
                timeout_s: float = 10.0) -> RedfishBmc:
    return RedfishBmc(url, username, password, verify=verify_tls, timeout_s=timeout_s)
