"""The HTTP/2 side of ``EdgeCore`` (refgateway._core): one h2 state machine per
connection that ALPN gave "h2", its streams judged and routed like HTTP/1.1 requests.

A mixin, not a class of its own, because a stream's answer goes through the same
connection state (``write``, ``close``, ``_handle``) as an HTTP/1.1 request's; it lives
in its own module so that _core.py stays one job (the connection and its TLS).
"""

from __future__ import annotations

import logging

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h11

__all__ = ["H2Side", "HOP_BY_HOP"]

log = logging.getLogger("refgateway.edge")

HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te",
                        b"trailer", b"upgrade", b"proxy-authenticate", b"proxy-authorization", b"content-length"})


class H2Side:
    """The ``_h2_*`` methods of EdgeCore; ``self`` is the EdgeCore."""

    def _h2_start(self) -> None:
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.h2.initiate_connection()
        self._h2_flush()

    def _h2_flush(self) -> None:
        data = self.h2.data_to_send() if self.h2 is not None else b""
        if data:
            self.write(data)

    def _h2_receive(self, chunk: bytes) -> None:
        if self.closed or self.eof:
            # After the client's GOAWAY h2 is CLOSED and would answer anything more (say a
            # SETTINGS ACK in the same read) with GOAWAY(PROTOCOL_ERROR): the connection ends.
            return
        try:
            events = self.h2.receive_data(chunk)
        except h2.exceptions.ProtocolError as exc:
            log.debug("HTTP/2 protocol error: %s", exc)
            self._h2_flush()  # the GOAWAY h2 prepared
            return self.close()
        if self._h2_oversized_frame(chunk):
            log.debug("HTTP/2 frame header announces more than %d bytes", self.h2.max_inbound_frame_size)
            self.h2.close_connection(error_code=h2.errors.ErrorCodes.FRAME_SIZE_ERROR)
            self._h2_flush()
            return self.close()
        ended = []
        for ev in events:
            if isinstance(ev, h2.events.RequestReceived):
                self.h2_streams[ev.stream_id] = (ev.headers, bytearray())
            elif isinstance(ev, h2.events.DataReceived):
                if ev.stream_id in self.h2_streams:
                    self.h2_streams[ev.stream_id][1].extend(ev.data)
                self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                entry = self.h2_streams.pop(ev.stream_id, None)
                if entry is not None:
                    ended.append((ev.stream_id, entry))
            elif isinstance(ev, h2.events.StreamReset):
                self.h2_streams.pop(ev.stream_id, None)
                self.h2_pending.pop(ev.stream_id, None)
            elif isinstance(ev, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
                self._h2_send_pending()
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.eof = True
        self._h2_flush()
        # Streams are answered after the whole chunk's frames were taken in, as if each
        # had its own task: a reset later in the chunk is seen first.
        for stream_id, (headers, body) in ended:
            self._h2_dispatch(stream_id, headers, bytes(body))

    def _h2_oversized_frame(self, chunk: bytes) -> bool:
        """Whether a frame header received so far announces more than SETTINGS_MAX_FRAME_SIZE.

        h2 checks a frame's length only once the whole frame has arrived: garbage after
        the preface (text reads as a multi-megabyte length) would leave the connection
        open and unanswered until up to 16 MB came in. RFC 9113 4.2: FRAME_SIZE_ERROR.
        """
        data = self.h2_head + chunk
        pos = self.h2_skip
        while pos + 9 <= len(data):
            length = int.from_bytes(data[pos:pos + 3], "big")
            if length > self.h2.max_inbound_frame_size:
                return True
            pos += 9 + length
        self.h2_skip = max(0, pos - len(data))
        self.h2_head = data[pos:] if pos < len(data) else b""
        return False

    def _h2_dispatch(self, stream_id: int, headers: list, body: bytes) -> None:
        if self.closed:
            return
        pseudo = {k: v for k, v in headers if k.startswith(b":")}
        regular = [(k, v) for k, v in headers if not k.startswith(b":")]
        if not any(k == b"host" for k, _ in regular) and pseudo.get(b":authority"):
            regular.insert(0, (b"host", pseudo[b":authority"]))  # RFC 9113 8.3.1
        try:
            req = h11.Request(method=pseudo.get(b":method", b""), target=pseudo.get(b":path", b""),
                              headers=regular)
        except h11.LocalProtocolError:
            answer = 400, [], b"bad request\n"
        else:
            try:
                answer = self._handle(req, body, stream_id)
            except Exception:  # a bug must not take the gateway down
                log.exception("HTTP/2 stream handler failed")
                answer = 500, [], b"internal error\n"
        if answer is None:
            self.h2_inflight.add(stream_id)
        else:
            self._h2_respond(stream_id, *answer)

    def _h2_respond(self, stream_id: int, status: int, resp_headers: list, payload: bytes) -> None:
        if self.closed or self.h2 is None:
            return
        self.answered += 1
        out = [(b":status", str(status).encode())]
        out += [(k.lower(), v) for k, v in resp_headers if k.lower() not in HOP_BY_HOP]
        out.append((b"content-length", str(len(payload)).encode()))
        try:
            self.h2.send_headers(stream_id, out, end_stream=not payload)
        except h2.exceptions.ProtocolError:  # the client reset the stream meanwhile
            return
        if payload:
            self.h2_pending[stream_id] = payload
            self._h2_send_pending()
        self._h2_flush()

    def _h2_send_pending(self) -> None:
        for stream_id in list(self.h2_pending):
            payload = self.h2_pending[stream_id]
            try:
                while payload:
                    window = min(self.h2.local_flow_control_window(stream_id),
                                 self.h2.max_outbound_frame_size)
                    if window <= 0:
                        break
                    self.h2.send_data(stream_id, payload[:window])
                    payload = payload[window:]
                if payload:
                    self.h2_pending[stream_id] = payload
                    continue
                self.h2.end_stream(stream_id)
            except h2.exceptions.ProtocolError:
                pass
            del self.h2_pending[stream_id]
        self._h2_flush()
