"""Notification handlers that apply OpenStack events to the map."""
