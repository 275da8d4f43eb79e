"""``stackmap-sensu-handler``: a Sensu pipe handler that puts one event on the map.

Sensu Go (and a Sensu Core server, for its handlers) runs a pipe handler once per event with the
event JSON on standard input. This one is built on ``sensu_plugin.SensuHandler`` and hands the
event to the same ``ResultPipeline`` the RabbitMQ consumer uses, so mapping, change detection and
messages are identical; being a fresh process per event, it compares against the status stored on
the object rather than a memory of earlier events. It never refreshes last-seen times: Sensu
decides how often it is called, and a handler that wrote on every repeated event would undo the
"unchanged results write nothing" rule.

Exit status: 0 when the event was applied, unchanged or ignored as not ours (Sensu should not flag
the handler for an unknown object), 1 for input that is not an event, 2 when the store failed.
Every case prints one line, never a traceback.
"""

from __future__ import annotations

import sys
from functools import partial
from typing import IO, Any

from sensu_plugin import SensuHandler

from daemons.monitor_handler.applier import StatusApplier
from daemons.monitor_handler.mapping import CheckMapper
from daemons.monitor_handler.pipeline import ResultPipeline
from daemons.monitor_handler.results import BadResult, loads_body
from stackmap.errors import StackmapError
from stackmap.logging import configure_logging, get_logger
from stackmap.settings import load_settings
from stackmap.store import Store, open_store

log = get_logger("stackmap.sensu_handler")

EXIT_BAD_INPUT = 1
EXIT_STORE = 2


class StackmapSensuHandler(SensuHandler):
    """One event in, one status decision out. ``argv``/``stdin``/``store`` can be injected (tests)."""

    def __init__(self, argv: list[str] | None = None, stdin: IO[str] | None = None, store: Store | None = None,
                 autorun: bool = True) -> None:
        self._argv = argv
        self._stdin = stdin
        self._store = store
        self._max_bytes = 1_048_576
        self.bad_input: BadResult | None = None
        self.outcome: str | None = None
        self.exit_code = 0
        super().__init__(autorun=autorun)

    # -- sensu_plugin hooks ------------------------------------------------------------------------
    def setup(self) -> None:
        self.parser.add_argument("--config", help="stackmap TOML settings file")
        self.parser.add_argument("--store", dest="store_url", help="store URL (overrides settings)")
        self.parser.add_argument("--environment", help="environment of events that do not name one")
        self.parser.add_argument("--log-level", type=str.upper, default=None)
        if self._argv is not None:
            self.parser.parse_known_args = partial(self.parser.parse_known_args, self._argv)

    def read_stdin(self) -> str:
        stream = self._stdin if self._stdin is not None else sys.stdin
        # one byte past the bound is enough to know the event is too large
        text: str = stream.read(self._max_bytes + 1)
        return text

    def read_event(self, check_result: str) -> dict[str, Any]:
        """The base class echoes the whole input into its exception; refuse bad input quietly instead."""
        try:
            event = loads_body(check_result, self._max_bytes)
        except BadResult as exc:
            self.bad_input = exc
            return {"check": {}, "client": {}, "occurrences": 1}
        event.setdefault("occurrences", 1)
        event.setdefault("check", {})
        event.setdefault("client", {})
        return event

    def handle(self) -> None:
        opts = self.options
        settings = load_settings(opts.config, store_url=opts.store_url, log_level=opts.log_level)
        configure_logging(settings.log_level, settings.log_format)
        mh = settings.monitor_handler
        store = self._store or open_store(settings.store_url)
        try:
            mapper = CheckMapper(store, environments=mh.environments or None,
                                 default_environment=opts.environment or (mh.environments[0]
                                                                          if len(mh.environments) == 1 else None))
            applier = StatusApplier(store, derived_link_types=mh.derived_link_types)
            pipeline = ResultPipeline(mapper, applier, transport="pipe", text_limit=mh.status_text_limit,
                                      max_bytes=mh.max_message_bytes)
            if self.bad_input is not None:
                self.outcome = pipeline.ignore(self.bad_input.reason, detail=self.bad_input.detail)
                self.exit_code = EXIT_BAD_INPUT
            else:
                try:
                    self.outcome = pipeline.handle_document(self.event)
                    pipeline.commit()
                except Exception as exc:
                    log.error("store read or write failed", error=str(exc), error_type=type(exc).__name__)
                    self.outcome, self.exit_code = "store_error", EXIT_STORE
        finally:
            if self._store is None:
                store.close()
        check = self.event.get("check", {})
        name = check.get("name") or (check.get("metadata") or {}).get("name") or "?"
        print(f"stackmap: {name}: {self.outcome}")


def main(argv: list[str] | None = None) -> int:
    try:
        handler = StackmapSensuHandler(argv=argv)
    except StackmapError as exc:
        print(f"stackmap: {exc}", file=sys.stderr)
        return EXIT_STORE
    except Exception as exc:  # e.g. sensu_plugin's optional v2-to-v1 mapping choking on an event
        print(f"stackmap: cannot handle the event: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if handler.exit_code == EXIT_BAD_INPUT and handler.bad_input is not None:
        print(f"stackmap: ignored bad event: {handler.bad_input.reason}", file=sys.stderr)
    return handler.exit_code


if __name__ == "__main__":
    sys.exit(main())
