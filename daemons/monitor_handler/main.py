"""``stackmap-monitor-handler``: the daemon that puts Sensu check results on the map.

It serves one broker: the one given by ``--broker-url`` (setting ``monitor_handler.broker_url``),
or the one named by the ``Monitoring`` section of the environments it serves (``--environment``,
or every environment with monitoring enabled). Results that do not name their environment belong
to the broker's environment when it serves exactly one. Environments on different Sensu brokers
need one handler each (``--environment``); that is refused with a clear message rather than
guessed at.

Readiness is reported to systemd once results are being consumed; the watchdog is fed from the
consumer loop itself (and while waiting for the broker), so a wedged loop gets the daemon
restarted; SIGHUP re-reads the settings and applies the batching and text knobs live.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any

from kombu import Connection

from daemons.monitor_handler.applier import StatusApplier
from daemons.monitor_handler.consumer import ResultConsumer
from daemons.monitor_handler.mapping import CheckMapper
from daemons.monitor_handler.pipeline import ResultPipeline
from stackmap.daemon import Daemon
from stackmap.environments import load_environment
from stackmap.errors import ConfigError, NotFound, StackmapError
from stackmap.logging import configure_logging, get_logger
from stackmap.secrets import SecretBox
from stackmap.settings import MonitorHandlerSettings, Settings, load_settings
from stackmap.store import Store, open_store

log = get_logger("stackmap.monitor_handler")

EXIT_CONFIG = 78  # EX_CONFIG: the unit does not restart on it (RestartPreventExitStatus)


@dataclass(frozen=True)
class BrokerSource:
    """Where results come from and which environments they may write to."""

    connection_args: dict[str, Any]
    environments: tuple[str, ...] | None
    default_environment: str | None

    def connect(self) -> Connection:
        return Connection(**self.connection_args)

    @property
    def display(self) -> str:
        conn = self.connect()
        try:
            return str(conn.as_uri())  # kombu masks the password
        finally:
            conn.release()


def open_monitor_store(url: str) -> Store:
    """The handler's store: it commits a batch of results at a time and acknowledges them after, so
    SQLite's checkpoints run in a thread of their own instead of stalling a commit now and then
    (the bench's p99 went from 180-210 ms to 50 ms)."""
    return open_store(url, background_checkpoints=True)


def resolve_broker(store: Store, settings: Settings, box: SecretBox) -> BrokerSource:
    """The broker to consume from, per the module docstring; ConfigError when it cannot be decided."""
    mh = settings.monitor_handler
    wanted = list(dict.fromkeys(mh.environments))
    for name in wanted:
        try:
            load_environment(store, name)
        except NotFound as exc:  # a wrong name in the settings: restarting will not fix it
            raise ConfigError(str(exc)) from None
    common: dict[str, Any] = {"heartbeat": 60, "connect_timeout": 10}
    if mh.broker_url is not None:
        envs = tuple(wanted) or None
        return BrokerSource({"hostname": mh.broker_url.get_secret_value(), **common}, envs,
                            wanted[0] if len(wanted) == 1 else None)
    if not wanted:
        wanted = [e["name"] for e in store.list_environments() if e.get("enable_monitoring")]
    brokers: dict[tuple[str, str, str, str], list[str]] = {}
    secrets: dict[tuple[str, str, str, str], str | None] = {}
    for name in wanted:
        section = load_environment(store, name).section("Monitoring")
        if section is None:
            raise ConfigError(f"environment {name} has no Monitoring section: give it one, or use --broker-url")
        key = (section.server_ip, str(section.rabbitmq_port), section.rabbitmq_user or "guest", mh.rabbitmq_vhost)
        brokers.setdefault(key, []).append(name)
        secrets[key] = box.reveal(section.rabbitmq_pass)
    if not brokers:
        raise ConfigError("no environment has monitoring enabled (enable_monitoring with a Monitoring section); "
                          "name one with --environment or give --broker-url")
    if len(brokers) > 1:
        groups = "; ".join(f"{h}:{p} for {', '.join(names)}" for (h, p, _u, _v), names in brokers.items())
        raise ConfigError(f"the environments use different Sensu brokers ({groups}): run one handler per broker "
                          "with --environment")
    (key, names), = brokers.items()
    host, port, user, vhost = key
    args = {"hostname": host, "port": int(port), "userid": user, "password": secrets[key], "virtual_host": vhost,
            "transport": "pyamqp", **common}
    return BrokerSource(args, tuple(names), names[0] if len(names) == 1 else None)


def build_pipeline(store: Store, mh: MonitorHandlerSettings, source: BrokerSource, *,
                   transport: str = "rabbitmq") -> ResultPipeline:
    mapper = CheckMapper(store, environments=source.environments, default_environment=source.default_environment)
    applier = StatusApplier(store, derived_link_types=mh.derived_link_types, last_seen_flush_s=mh.last_seen_flush_s)
    return ResultPipeline(mapper, applier, transport=transport, text_limit=mh.status_text_limit,
                          max_bytes=mh.max_message_bytes)


def build_consumer(source: BrokerSource, pipeline: ResultPipeline, mh: MonitorHandlerSettings,
                   **hooks: Any) -> ResultConsumer:
    return ResultConsumer(
        source.connect(), pipeline, exchange=mh.exchange, queue=mh.queue, dead_letter_exchange=mh.dead_letter_exchange,
        message_ttl_s=mh.queue_message_ttl_s, max_length=mh.queue_max_length, prefetch=mh.prefetch,
        batch_size=mh.batch_size, batch_timeout_s=mh.batch_timeout_s, connect_max_retries=mh.connect_max_retries,
        **hooks)


class MonitorHandler(Daemon):
    name = "monitor-handler"

    def __init__(self, settings: Settings | None = None, *, config_file: str | None = None,
                 overrides: dict[str, Any] | None = None) -> None:
        super().__init__(settings, config_file=config_file, overrides=overrides)
        self.consumer: ResultConsumer | None = None
        self.pipeline: ResultPipeline | None = None
        self._ready_sent = False

    def run(self, *, install_signals: bool = True) -> int:
        mh = self.settings.monitor_handler
        if install_signals:
            self.install_signal_handlers()
        store = open_monitor_store(self.settings.store_url)
        try:
            source = resolve_broker(store, self.settings, SecretBox(self.settings.secret_key_file))
            self.start_metrics(mh.metrics_addr)
            self.pipeline = build_pipeline(store, mh, source)
            self.consumer = build_consumer(source, self.pipeline, mh, stop_event=self.stop_event, on_tick=self._tick,
                                           on_ready=self._ready)
            log.info("monitor handler starting", broker=source.display, environments=source.environments or "any",
                     queue=mh.queue)
            self.notifier.status(f"connecting to {source.display}")
            self.consumer.run_until_stopped()
        finally:
            self.notifier.stopping()
            if self.pipeline is not None:
                try:
                    self.pipeline.flush_last_seen(force=True)
                except Exception as exc:
                    log.warning("final last-seen flush failed", error=str(exc))
            if self.metrics_server is not None:
                self.metrics_server.shutdown()
                self.metrics_server = None
            store.close()
            log.info("daemon stopped", daemon=self.name)
        return 0

    def _ready(self) -> None:
        if not self._ready_sent:
            self._ready_sent = True
            self.notifier.ready("consuming check results")
        else:
            self.notifier.status("consuming check results (reconnected)")

    def _tick(self) -> None:
        self.heartbeat()
        if self.reload_requested.is_set():
            self.reload_settings()

    def on_reload(self) -> None:
        """Apply what can change without reconnecting; the rest needs a restart, and says so."""
        mh = self.settings.monitor_handler
        if self.consumer is not None:
            self.consumer.batch_size = mh.batch_size
            self.consumer.batch_timeout_s = mh.batch_timeout_s
        if self.pipeline is not None:
            self.pipeline.text_limit = mh.status_text_limit
            self.pipeline.max_bytes = mh.max_message_bytes
            self.pipeline.applier.last_seen_flush_s = mh.last_seen_flush_s
            self.pipeline.applier.derived_link_types = frozenset(mh.derived_link_types)
        log.info("monitor handler settings applied; broker, queue and environment changes need a restart")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="stackmap-monitor-handler", description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="TOML settings file")
    parser.add_argument("--store", dest="store_url", help="store URL (overrides settings)")
    parser.add_argument("--broker-url", help="amqp://user:pass@host:port/vhost (else from the environments)")
    parser.add_argument("--environment", action="append", default=None,
                        help="an environment this handler serves (repeatable; default: all with monitoring)")
    parser.add_argument("--metrics-addr", help="HOST:PORT for /metrics")
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], type=str.upper)
    parser.add_argument("--log-format", choices=["auto", "json", "console"])
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    nested = {k: v for k, v in (("broker_url", args.broker_url), ("environments", args.environment),
                                ("metrics_addr", args.metrics_addr)) if v is not None}
    overrides: dict[str, Any] = {"store_url": args.store_url, "log_level": args.log_level,
                                 "log_format": args.log_format}
    if nested:
        overrides["monitor_handler"] = nested
    try:
        settings = load_settings(args.config, **overrides)
    except ConfigError as exc:
        configure_logging("INFO", args.log_format or "auto")
        log.error("cannot start", error=str(exc))
        return EXIT_CONFIG
    configure_logging(settings.log_level, settings.log_format)
    try:
        return MonitorHandler(settings, config_file=args.config, overrides=overrides).run()
    except ConfigError as exc:
        log.error("cannot start", error=str(exc))
        return EXIT_CONFIG
    except StackmapError as exc:
        log.error("monitor handler failed", error=str(exc))
        return 1


if __name__ == "__main__":
    sys.exit(main())
