"""`facegate serve`: the Starlette app (REST, WebSocket, panel) around the live runtime."""
