"""Fewer system calls for py-amqp consumers on plain TCP (the event listener, the monitor consumer).

py-amqp's plain-TCP transport asks its socket for exactly the bytes it needs next (frame header,
payload, end marker): three ``recv`` calls per frame, nine per message, and that caps a consumer at a
few thousand messages a second. ``buffer_socket_reads`` installs a buffered ``_read`` that reads up
to 64 KiB at a time. It keeps ``_read``'s contract: exactly ``n`` bytes, ``socket.timeout`` raised
with nothing lost, and bytes that ``read_frame`` pushes back into ``_read_buffer`` after a timeout
are read first. TLS transports buffer on their own and are left alone.

Given a fixed drain timeout, it also sets the socket's timeout once: py-amqp otherwise sets and
restores it around every frame (two more system calls per frame). A write blocked for that long then
counts as a lost connection, which kombu re-establishes; use it only on a connection that sends
little (acknowledgements).
"""

from __future__ import annotations

import errno
from typing import Any

READ_BYTES = 64 * 1024
_INTERRUPTED = (errno.EAGAIN, errno.EINTR)


class BufferedReads:
    """The buffered ``_read`` (see the module docstring); ``frame_ready`` tells a consumer that a
    whole frame is waiting, so it can read it without a system call or a timeout."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.buffer = b""
        self.pos = 0

    def __call__(self, n: int, initial: bool = False) -> bytes:
        transport = self.transport
        if transport._read_buffer:  # bytes handed back after an interrupted read come first
            self.buffer, self.pos = transport._read_buffer + self.buffer[self.pos:], 0
            transport._read_buffer = b""
        buf, pos = self.buffer, self.pos
        if len(buf) - pos >= n:  # the usual case: no system call
            self.pos = pos + n
            return buf[pos:pos + n]
        parts = [buf[pos:]]
        have = len(parts[0])
        self.buffer, self.pos = b"", 0
        try:
            while have < n:
                try:
                    chunk = transport.sock.recv(max(READ_BYTES, n - have))
                except OSError as exc:
                    if exc.errno in _INTERRUPTED:
                        if initial and transport.raise_on_initial_eintr:
                            raise TimeoutError() from None
                        continue
                    raise
                if not chunk:
                    raise OSError("Server unexpectedly closed connection")
                parts.append(chunk)
                have += len(chunk)
        except BaseException:
            transport._read_buffer = b"".join(parts)  # nothing lost: the next read starts with these
            raise
        data = b"".join(parts)
        self.buffer, self.pos = data, n
        return data[:n]

    def frame_ready(self) -> bool:
        """Whether a whole frame is already buffered (reading it needs no system call, no timeout)."""
        available = len(self.buffer) - self.pos
        if available < 8 or self.transport._read_buffer:
            return False
        size = int.from_bytes(self.buffer[self.pos + 3:self.pos + 7], "big")
        return available >= size + 8


def buffer_socket_reads(connection: Any, timeout: float | None = None) -> BufferedReads | None:
    """Install ``BufferedReads`` on a kombu connection's plain-TCP py-amqp transport (None when it
    is not one); with ``timeout``, also fix the socket's timeout to it (see the module docstring)."""
    transport: Any = getattr(getattr(connection, "connection", None), "transport", None)
    if type(transport).__name__ != "TCPTransport" or not hasattr(transport, "_read_buffer") or \
            getattr(transport, "sock", None) is None:
        return None
    if timeout is not None:
        transport.sock.settimeout(timeout)
        _skip_timeout_switching(connection.connection, transport, timeout)
    reader = BufferedReads(transport)
    transport._read = reader
    return reader


def _skip_timeout_switching(amqp_connection: Any, transport: Any, timeout: float) -> None:
    """py-amqp's ``blocking_read`` enters ``having_timeout`` (a generator-based context manager) for
    every frame, even when the timeout does not change; with the socket's timeout fixed to the drain
    timeout, read frames directly and keep the context manager for any other timeout."""
    if not callable(getattr(amqp_connection, "blocking_read", None)) or not hasattr(transport, "read_frame"):
        return
    read_frame, having_timeout = transport.read_frame, transport.having_timeout
    would_block = errno.EWOULDBLOCK

    def blocking_read(timeout_s: float | None = None) -> Any:
        if timeout_s != timeout:
            with having_timeout(timeout_s):
                frame = read_frame()
        else:
            try:
                frame = read_frame()
            except OSError as exc:
                if exc.errno == would_block:  # what having_timeout turns into a timeout
                    raise TimeoutError() from None
                raise
        return amqp_connection.on_inbound_frame(frame)

    amqp_connection.blocking_read = blocking_read
