"""Security group events; rule events re-read their group, whose document carries its rules."""

from __future__ import annotations

from typing import ClassVar

from handlers.base import EventResult, PayloadHandler
from handlers.envelope import Notification


class SecurityGroupHandler(PayloadHandler):
    kind = "security_group"
    item_key = "security_group"
    id_key = "security_group_id"
    handles: ClassVar[dict[str, str]] = {
        "security_group.create.end": "upsert", "security_group.update.end": "upsert",
        "security_group.delete.end": "delete",
        "security_group_rule.create.end": "rule_changed", "security_group_rule.delete.end": "rule_changed",
    }

    def rule_changed(self, n: Notification) -> EventResult:
        rule = n.data.get("security_group_rule")
        group_ids: list[str] = []
        if isinstance(rule, dict) and rule.get("security_group_id"):
            group_ids = [str(rule["security_group_id"])]
        else:  # a delete names only the rule: find the groups that hold it
            rule_id = n.data.get("security_group_rule_id")
            if not rule_id:
                return EventResult.failed(f"{n.event_type}: payload names no rule")
            group_ids = [g["id"] for g in self.updater.store.find_objects(self.updater.environment,
                                                                          type="security_group")
                         if any(r.get("id") == rule_id for r in g.get("security_group_rules") or [])]
        results = []
        for gid in group_ids:
            group = self.updater.show("security_group", gid)
            if group is not None:
                results.append(self.apply_item(group, n.event_type))
        if not results:
            return EventResult.skip(f"{n.event_type}: no mapped group holds that rule")
        return results[-1]
