"""Serving the API with uvicorn inside an event loop that also runs other things (a worker)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Generator

import uvicorn
from fastapi import FastAPI


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to its host process.

    uvicorn installs its own SIGINT/SIGTERM handlers and re-raises the signal when it stops,
    which would bypass the worker's orderly shutdown in ``warren dev``.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class ApiServer:
    """Runs an ASGI app on ``host:port`` as a task of the current event loop.

    Args:
        app: The application (see :func:`engine._http._app.create_app`).
        host: Interface to bind.
        port: TCP port; ``0`` picks a free one (read :attr:`port` after :meth:`start`).
    """

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 8787) -> None:
        self.host = host
        self.port = port
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            lifespan="off",
            server_header=False,
        )
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        """Base URL of the running server."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Bind and start serving; returns once the socket accepts connections.

        Raises:
            OSError: The address could not be bound (e.g. the port is in use).
        """
        # Bind here rather than in uvicorn, which logs a bind failure and calls sys.exit().
        sock = _bind(self.host, self.port)
        self.port = sock.getsockname()[1]
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="warren-api")
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise OSError(f"the API server on {self.url} stopped while starting")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        """Stop accepting connections and finish in-flight requests."""
        if self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(Exception, SystemExit):
            await self._task
        self._task = None

    async def wait(self) -> None:
        """Until the server stops by itself."""
        if self._task is not None:
            await asyncio.shield(self._task)


def _bind(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise OSError(f"cannot resolve host {host!r}: {exc.strerror}") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    return sock
