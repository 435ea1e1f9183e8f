"""Volt: the open control plane and data plane for a sovereign GPU cloud."""
