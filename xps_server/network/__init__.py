"""Sockets: listeners and client connections (upstreams arrive with the proxy)."""
