#!/usr/bin/env python3
"""A TCP proxy that adds a round trip of latency to every request: each time a client
sends data after the server last answered (a new request on a kept-alive connection, or
the first one), the data waits LATENCY_MS before it is forwarded.

Usage: latency_proxy.py LISTEN_PORT UPSTREAM_PORT LATENCY_MS
"""
import asyncio
import sys


async def pipe(reader, writer, state, upstream, delay):
    try:
        while True:
            data = await reader.read(1 << 16)
            if not data:
                break
            if upstream and state["answered"]:
                state["answered"] = False
                await asyncio.sleep(delay)
            if not upstream:
                state["answered"] = True
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def main():
    listen, upstream_port, latency_ms = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    delay = latency_ms / 1000.0

    async def handle(client_reader, client_writer):
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
        state = {"answered": True}
        await asyncio.gather(
            pipe(client_reader, server_writer, state, True, delay),
            pipe(server_reader, client_writer, state, False, delay),
        )

    server = await asyncio.start_server(handle, "127.0.0.1", listen)
    async with server:
        await server.serve_forever()


asyncio.run(main())
