"""The long-running stackmap services (scan manager, event manager, monitor handler)."""
