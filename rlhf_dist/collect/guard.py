"""What every response of the collection app passes through (pure ASGI middleware, below the routes): strict
headers, a request-size limit and, on a loopback bind, a Host check (a page on another site that points its
name at 127.0.0.1 reaches nothing)."""
from __future__ import annotations

HEADERS = [
    # No inline script or style anywhere: the only script is the shipped keys.js.
    (b"content-security-policy", b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                                 b"form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),  # no-referrer makes Chromium send "Origin: null" on form posts
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]
LOOPBACK_NAMES = {"127.0.0.1", "localhost", "[::1]"}


def host_name(value: str) -> str:
    """'127.0.0.1:8765' -> '127.0.0.1', '[::1]:80' -> '[::1]'."""
    if value.startswith("["):
        return value[: value.find("]") + 1]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class Guard:
    def __init__(self, app, max_body_bytes: int, loopback: bool):
        self.app, self.max_body, self.loopback = app, max_body_bytes, loopback

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *HEADERS]}
            await send(message)

        if self.loopback and host_name(headers.get(b"host", b"").decode("latin-1").lower()) not in LOOPBACK_NAMES:
            return await _plain(send_with_headers, 400, "unknown Host header: this server answers only on its loopback address")
        try:
            declared = int(headers.get(b"content-length", b"0"))
        except ValueError:
            return await _plain(send_with_headers, 400, "malformed Content-Length")
        if declared > self.max_body:
            return await _plain(send_with_headers, 413, f"request body over {self.max_body} bytes")
        # The body is read whole here, up to the limit, before any route sees it (a chunked body has no
        # Content-Length to refuse it by).
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body:
                return await _plain(send_with_headers, 413, f"request body over {self.max_body} bytes")
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send_with_headers)


async def _plain(send, status: int, text: str) -> None:
    body = (text + "\n").encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
