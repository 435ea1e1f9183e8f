"""Vault: dedicated bare-metal racks — their lifecycle, the Redfish drivers
that provision and clean their nodes, and (to come) the tenant Redfish proxy
and Talos configuration."""
