"""Host-level discovery: what runs on each host (pNICs, bridges, virtual switches, tunnels, namespaces)."""
