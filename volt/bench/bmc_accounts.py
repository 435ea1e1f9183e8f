"""``sushy-emulator`` with a Redfish AccountService: what real BMCs (iDRAC,
iLO, OpenBMC) offer and the emulator does not, so that Vault's rotation of a
BMC's password on release runs against a BMC whose logins really change.

``python -m volt.bench.bmc_accounts --config FILE --fake`` is the emulator
(same arguments) plus DMTF's AccountService, kept to what rotation uses:
the service (linked from the service root), its ``Accounts`` collection (one
``ManagerAccount`` per line of the emulator's htpasswd file) and ``PATCH``
of an account's ``Password``, which rewrites that line with a bcrypt hash of
the new password — the emulator reads the file on every request, so the old
password stops working at once. A password is never returned (``null``, as
DMTF's schema says).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import bcrypt
import flask
from sushy_tools.emulator import main as emulator

SERVICE = "/redfish/v1/AccountService"
ACCOUNTS = SERVICE + "/Accounts"
accounts = flask.Blueprint("volt_accounts", __name__)


def _users() -> list[str]:
    text = Path(emulator.app.config["SUSHY_EMULATOR_AUTH_FILE"]).read_text()
    return [line.split(":", 1)[0] for line in text.splitlines() if ":" in line]


def _json(body: dict[str, Any], status: int = 200) -> flask.Response:
    return flask.Response(json.dumps(body), status=status, mimetype="application/json")


def _error(status: int, message: str) -> flask.Response:
    return _json({"error": {"code": "Base.1.8.GeneralError", "message": message}}, status)


@accounts.route(SERVICE, methods=["GET"])
def account_service() -> flask.Response:
    return _json({"@odata.type": "#AccountService.v1_5_0.AccountService",
                  "@odata.id": SERVICE, "Id": "AccountService", "Name": "Account Service",
                  "ServiceEnabled": True, "Accounts": {"@odata.id": ACCOUNTS}})


@accounts.route(ACCOUNTS, methods=["GET"])
def account_collection() -> flask.Response:
    members = [{"@odata.id": f"{ACCOUNTS}/{n}"} for n in range(1, len(_users()) + 1)]
    return _json({"@odata.type": "#ManagerAccountCollection.ManagerAccountCollection",
                  "@odata.id": ACCOUNTS, "Name": "Accounts", "Members": members,
                  "Members@odata.count": len(members)})


@accounts.route(ACCOUNTS + "/<int:number>", methods=["GET", "PATCH"])
def account(number: int) -> flask.Response:
    users = _users()
    if not 1 <= number <= len(users):
        return _error(404, f"No account {number}.")
    if flask.request.method == "PATCH":
        body = flask.request.get_json(silent=True) or {}
        password = body.get("Password")
        if not isinstance(password, str) or not password:
            return _error(400, "Give the new Password.")
        path = Path(emulator.app.config["SUSHY_EMULATOR_AUTH_FILE"])
        lines = path.read_text().splitlines()
        digest = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
        lines[number - 1] = f"{users[number - 1]}:{digest}"
        path.write_text("\n".join(lines) + "\n")
        return flask.Response(status=204)
    return _json({"@odata.type": "#ManagerAccount.v1_4_0.ManagerAccount",
                  "@odata.id": f"{ACCOUNTS}/{number}", "Id": str(number),
                  "Name": "User Account", "UserName": users[number - 1],
                  "RoleId": "Administrator", "Enabled": True, "Locked": False,
                  "Password": None})


def _link_from_the_root(response: flask.Response) -> flask.Response:
    """The service root names the AccountService (how a client finds it)."""
    if flask.request.path.rstrip("/") == "/redfish/v1" and response.status_code == 200:
        root = json.loads(response.get_data())
        root["AccountService"] = {"@odata.id": SERVICE}
        response.set_data(json.dumps(root))
    return response


emulator.app.register_blueprint(accounts)
emulator.app.after_request(_link_from_the_root)

if __name__ == "__main__":
    emulator.main()
