"""Server group events (Calipso listed them but never handled them): re-read the group from the API."""

from __future__ import annotations

from typing import ClassVar

from handlers.base import ApiHandler


class ServerGroupHandler(ApiHandler):
    object_type = kind = "server_group"
    label = "server group"
    id_keys = ("server_group_id", "uuid", "id")
    handles: ClassVar[dict[str, str]] = {
        "servergroup.create": "changed", "servergroup.update": "changed", "servergroup.delete": "deleted",
        "server_group.create": "changed", "server_group.update": "changed", "server_group.delete": "deleted",
        "server_group.add_member": "changed",
    }
