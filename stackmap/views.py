"""Ways to look at the map: the inventory as a tree, a clique as text or Graphviz dot."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from rich.tree import Tree

Doc = Mapping[str, Any]


def inventory_tree(environment: str, objects: Iterable[Doc], root_id: str | None = None) -> Tree:
    """A rich Tree of the environment (or of one object's subtree), children sorted by type then name."""
    children: dict[str, list[Doc]] = defaultdict(list)
    by_id: dict[str, Doc] = {}
    for obj in objects:
        by_id[obj["id"]] = obj
        children[obj.get("parent_id") or ""].append(obj)

    def label(obj: Doc) -> str:
        if obj["type"].endswith("_folder"):
            return f"[bold]{obj.get('text') or obj.get('name')}[/bold]"
        name = obj.get("name") or obj["id"]
        suffix = f" [dim]{obj['id']}[/dim]" if name != obj["id"] else ""
        return f"[cyan]{obj['type']}[/cyan] {name}{suffix}"

    def add(node: Tree, parent_id: str, depth: int) -> None:
        if depth > 64:
            return
        for child in sorted(children.get(parent_id, []), key=lambda o: (o["type"], str(o.get("name")))):
            add(node.add(label(child)), child["id"], depth + 1)

    if root_id is not None and root_id in by_id:
        tree = Tree(label(by_id[root_id]))
        add(tree, root_id, 0)
    else:
        tree = Tree(f"[bold]{environment}[/bold]")
        add(tree, environment, 0)
    return tree


def _dot_id(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def clique_dot(clique: Doc, objects: Mapping[str, Doc]) -> str:
    """Graphviz dot for one clique: nodes labelled type + name, edges labelled by link type and state."""
    lines = [f"digraph {_dot_id('clique ' + str(clique['focal_point']))} {{", "  rankdir=LR;",
             "  node [shape=box, fontname=Helvetica];"]
    for node in clique.get("nodes") or []:
        obj = objects.get(node, {})
        label = f"{obj.get('type', '?')}\\n{obj.get('name', node)}"
        style = ", style=bold" if node == clique["focal_point"] else ""
        lines.append(f"  {_dot_id(node)} [label={_dot_id(label)}{style}];")
    for link in clique.get("links_detailed") or []:
        color = "" if link.get("state", "up") == "up" else ", color=red"
        lines.append(f"  {_dot_id(link['source_id'])} -> {_dot_id(link['target_id'])} "
                     f"[label={_dot_id(link['link_type'])}{color}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def clique_text(clique: Doc, objects: Mapping[str, Doc]) -> list[str]:
    def name(oid: str) -> str:
        obj = objects.get(oid, {})
        return f"{obj.get('type', '?')} {obj.get('name', oid)}"

    lines = [f"clique of {name(clique['focal_point'])} (type {clique.get('clique_type')}, "
             f"{len(clique.get('nodes') or [])} objects, {len(clique.get('links') or [])} links)"]
    for link in clique.get("links_detailed") or []:
        lines.append(f"  {link['link_type']:<22} {name(link['source_id'])} -> {name(link['target_id'])} "
                     f"[{link.get('state', 'up')}]")
    return lines
