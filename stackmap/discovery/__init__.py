"""Discovery: turning an OpenStack cloud into inventory, links and cliques."""
