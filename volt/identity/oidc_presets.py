"""What differs between the identity providers admins sign in with.

Each preset gives the issuer URL's shape (checked at start, so a typo is
caught before anyone tries to sign in), the claim that carries groups, and
the scopes to ask for.

* **Okta** (``okta``): ``https://<your-okta-domain>/oauth2/<authorization-server-id>``
  (``default`` for the default custom authorization server), or the org
  authorization server ``https://<your-okta-domain>``. Groups reach the ID
  token only through a ``groups`` claim you add to the authorization server
  (with a filter, e.g. "Matches regex .*") and the ``groups`` scope, which
  Volt asks for. Values are group *names*.
* **Microsoft Entra ID** (``entra``): ``https://login.microsoftonline.com/<tenant-id>/v2.0``.
  Set ``groupMembershipClaims`` in the app manifest. Values are group
  *object IDs* (GUIDs), not names: map those. A user in more than 200 groups
  gets ``_claim_names`` (the overage indicator) instead of ``groups``; Volt
  then sees no groups and grants no role — assign the app's groups, or use
  app roles (``groups_claim = "roles"``) instead.
* **Google Workspace** (``google``): ``https://accounts.google.com``. Google's
  ID tokens carry no groups at all; the hosted domain (``hd``) is the claim
  that says which Workspace a user belongs to, so the preset maps ``hd``
  (``role_map = {"example.com" = "acme:member"}``). Use a Cloud Identity
  group sync elsewhere if roles must follow groups.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Preset:
    issuer_pattern: str
    groups_claim: str
    scopes: tuple[str, ...]


PRESETS = {
    # Dex, Keycloak, Authentik and oidc-provider release groups for a `groups` scope.
    "generic": Preset(r"https?://.+", "groups", ("openid", "email", "profile", "groups")),
    "okta": Preset(r"https://[A-Za-z0-9.-]+(/oauth2/[A-Za-z0-9]+)?", "groups",
                   ("openid", "email", "profile", "groups")),
    "entra": Preset(r"https://login\.microsoftonline\.com/[0-9a-fA-F-]{36}/v2\.0", "groups",
                    ("openid", "email", "profile")),
    "google": Preset(r"https://accounts\.google\.com", "hd", ("openid", "email", "profile")),
}


def check_issuer(preset: str, issuer: str) -> None:
    if not re.fullmatch(PRESETS[preset].issuer_pattern, issuer):
        raise ValueError(f"{issuer!r} is not a {preset} issuer URL")
