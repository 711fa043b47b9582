"""Warren's HTTP API (API.md §5) and the client the CLI uses to talk to it.

Import from the modules: ``_app.create_app`` builds the FastAPI app over an
:class:`sdk.Client`, ``_config.ApiSettings`` holds auth and limits, ``_server.ApiServer``
serves an app inside a running event loop, and ``_remote.ApiClient`` is the CLI's client.
Nothing is imported here, so the CLI's remote commands do not pay for FastAPI's import.
"""
