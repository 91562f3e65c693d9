"""A TCP gate: a proxy on 127.0.0.1 in front of one server that a test opens and closes.

Closed, the gate stops listening (new connections are refused, as by a host whose
server is down) and resets every connection it carries; reopened, it listens on the
same port again. Partitioned, it keeps every connection up and accepts new ones, but
nothing gets through until it is opened (a network that drops packets: TCP delivers
what was held once it heals). It runs an asyncio loop in a thread of its own, so a test drives it
with plain calls from any thread.
"""

import asyncio
import socket
import struct
import threading


class Gate:
    def __init__(self, target_host, target_port, name="gate"):
        self.target = (target_host, target_port)
        self.name = name
        self.port = None
        self.accepted = 0
        self.cut = 0
        self._server = None
        self._writers = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._thread.start()
        self._call(self._listen())

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.stop()

    def _call(self, coroutine, timeout=10):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    @property
    def is_open(self):
        return self._server is not None

    def open(self):
        if not self.is_open:
            self._call(self._listen())
        self._loop.call_soon_threadsafe(self._flowing.set)

    def partition(self):
        """Holds every byte, on open connections and on new ones, until `open`."""
        self._loop.call_soon_threadsafe(self._flowing.clear)

    def close(self):
        """Refuses new connections and resets the open ones; returns how many it cut."""
        return self._call(self._shut())

    def stop(self):
        if self._loop.is_closed():
            return
        try:
            self._call(self._shut())
            self._call(self._cancel_tasks())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._loop.close()

    async def _listen(self):
        # The same port again after a close: clients keep the address they were given.
        for attempt in range(50):
            try:
                self._server = await asyncio.start_server(
                    self._carry, "127.0.0.1", self.port or 0, reuse_address=True
                )
                break
            except OSError:
                if attempt == 49:
                    raise
                await asyncio.sleep(0.1)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _shut(self):
        if self._server is not None:
            self._server.close()
            self._server = None
        writers, self._writers = self._writers, set()
        for writer in writers:
            reset(writer)
        self.cut += len(writers) // 2
        return len(writers) // 2

    async def _pump(self, reader, writer):
        try:
            while data := await reader.read(65536):
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except (OSError, RuntimeError):
            reset(writer)

    async def _cancel_tasks(self):
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _carry(self, client_reader, client_writer):
        if self._server is None:
            reset(client_writer)
            return
        await self._flowing.wait()
        try:
            server_reader, server_writer = await asyncio.wait_for(asyncio.open_connection(*self.target), 5)
        except (OSError, asyncio.TimeoutError):
            reset(client_writer)
            return
        self.accepted += 1
        pair = {client_writer, server_writer}
        self._writers |= pair
        try:
            await asyncio.gather(
                self._pump(client_reader, server_writer), self._pump(server_reader, client_writer),
                return_exceptions=True,
            )
        finally:
            self._writers -= pair
            for writer in pair:
                writer.close()


def reset(writer):
    """Closes with a TCP reset, as a peer that vanished: the other side's next read fails at once."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()
