"""Scan requests as the CLI and the scan manager share them: submit, cancel, describe, options.

A request is a ``scans`` document in status ``pending``. The scan manager claims it (``running``,
with an owner and a lease), and it ends ``completed``, ``completed_with_errors``, ``failed`` or
``aborted``. Besides the model's fields the manager keeps, in the same document, ``attempts`` (how
many times a manager started it: a scan whose manager died is re-queued up to a limit),
``worker_pid``/``worker_host`` (where it runs) and ``progress`` (its phase and counts, for
``stackmap scan --wait``).

Cancelling is cooperative for a running scan (``cancel_requested``, which its manager polls and
answers by stopping the scan process) and immediate for a pending one (compare-and-set from
``pending`` to ``aborted``, so a request cannot be both cancelled and claimed).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from stackmap.environments import load_environment
from stackmap.errors import NotFound, StackmapError
from stackmap.model import FINISHED_SCAN_STATUSES, Scan, ScanStatus, utcnow
from stackmap.store import Doc, Store

if TYPE_CHECKING:  # the scan code is heavy to import; the manager process itself never needs it
    from stackmap.discovery.scan import ScanOptions

CANCELLED_REASON = "cancelled by operator"
INVALID_REQUEST = "invalid scan request"
FINISHED = frozenset(s.value for s in FINISHED_SCAN_STATUSES)


def scan_options(doc: Mapping[str, Any]) -> ScanOptions:
    """The ScanOptions a scan document asks for; StackmapError if they contradict each other.

    Called in the scan process, which has the scan code loaded anyway.
    """
    from stackmap.discovery.scan import ScanOptions

    types = doc.get("resource_types")
    try:
        if types is not None and (not isinstance(types, list) or not all(isinstance(t, str) and t for t in types)):
            raise StackmapError(f"resource_types must be a list of type names, not {types!r}")
        return ScanOptions(
            inventory_only=bool(doc.get("scan_only_inventory")), links_only=bool(doc.get("scan_only_links")),
            cliques_only=bool(doc.get("scan_only_cliques")), clear=bool(doc.get("clear")),
            object_id=doc.get("object_id") or None, resource_types=list(types) if types else None)
    except StackmapError as exc:
        raise StackmapError(f"{INVALID_REQUEST}: {exc}") from None


def scan_kind(doc: Mapping[str, Any]) -> str:
    """What a scan covers, in a few words (listings, messages)."""
    if doc.get("object_id"):
        return f"object {doc['object_id']}"
    if doc.get("resource_types"):
        return "types " + ",".join(doc["resource_types"])
    for field, text in (("scan_only_inventory", "inventory only"), ("scan_only_links", "links only"),
                        ("scan_only_cliques", "cliques only")):
        if doc.get(field):
            return text
    return "full" + (" (clear)" if doc.get("clear") else "")


def submit(store: Store, environment: str, options: ScanOptions) -> Doc:
    """Queue a scan of an existing environment; returns the stored request."""
    load_environment(store, environment)  # NotFound for an unknown name, before anything is queued
    scan = Scan(environment=environment, status=ScanStatus.PENDING, clear=options.clear,
                scan_only_inventory=options.inventory_only, scan_only_links=options.links_only,
                scan_only_cliques=options.cliques_only, object_id=options.object_id,
                resource_types=list(options.resource_types) if options.resource_types else None)
    doc = scan.to_doc()
    store.submit_scan(doc)
    return doc


def get(store: Store, scan_id: str) -> Doc:
    doc = store.get_scan(scan_id)
    if doc is None:
        raise NotFound(f"no scan {scan_id!r}")
    return doc


def cancel(store: Store, scan_id: str) -> str:
    """Cancel a scan: a pending one ends ``aborted`` at once; a running one is asked to stop.

    Returns the scan's status after the call (``aborted`` or ``running``). A claim can race with
    the cancel, hence the retry: each step is a compare-and-set on the status it read.
    """
    for _ in range(5):
        doc = get(store, scan_id)
        status = doc.get("status")
        if status in FINISHED:
            raise StackmapError(f"scan {scan_id} has already finished ({status})")
        if status == ScanStatus.RUNNING.value:
            if store.update_scan(scan_id, {"cancel_requested": True}, expect_status=ScanStatus.RUNNING.value):
                return ScanStatus.RUNNING.value
        elif store.update_scan(scan_id, {"status": ScanStatus.ABORTED.value, "cancel_requested": True,
                                         "end_timestamp": utcnow(), "error": CANCELLED_REASON},
                               expect_status=str(status)):
            return ScanStatus.ABORTED.value
    raise StackmapError(f"scan {scan_id} kept changing state; try again")


def queue_position(store: Store, doc: Mapping[str, Any]) -> int:
    """How many pending scans are ahead of this pending one (0: it is next)."""
    mine = (doc["submit_timestamp"], doc["id"])
    return sum(1 for other in store.find_scans(status=[ScanStatus.PENDING.value])
               if (other["submit_timestamp"], other["id"]) < mine)
