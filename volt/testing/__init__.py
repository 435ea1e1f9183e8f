"""Test helpers shipped with Volt: a real multi-process cluster, real NATS."""

from volt.testing.cluster import Cluster, ClusterError, ServiceProcess
from volt.up.nats_server import NatsServer, free_port

__all__ = ["Cluster", "ClusterError", "NatsServer", "ServiceProcess", "free_port"]
