"""Vault: dedicated bare-metal racks — the rack inventory (``inventory``), its
lifecycle (``states``) and single writer (``racks``), the Redfish driver that
provisions and cleans each node (``redfish``, driven by ``nodes``), Talos
configuration (``talos``), the tenant's Redfish proxy (``redfish_proxy``,
``redfish_credentials``) and the signed attestation report (``report``)."""
