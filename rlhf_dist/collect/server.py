"""`rlhf-dist collect serve`: the candidates and the store checked, the port bound, each annotator's link
printed, then the app served by uvicorn until interrupted (Ctrl-C; SIGTERM alike)."""
from __future__ import annotations

import socket
from urllib.parse import quote

from rlhf_dist.collect.items import read_items
from rlhf_dist.collect.store import Store
from rlhf_dist.config import ConfigError
from rlhf_dist.config.collect import ServeConfig


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before uvicorn starts: a port in use is one line, and port 0's pick is known."""
    address = "127.0.0.1" if host == "localhost" else host
    sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((address, port))
    except OSError as e:
        sock.close()
        raise ConfigError(f"--port: cannot listen on {address}:{port} ({e.strerror})") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url_host(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def serve(cfg: ServeConfig, log=print) -> None:
    import uvicorn

    from rlhf_dist.collect.app import CollectApp

    items = read_items(cfg.candidates)  # every line checked before the store is touched
    store = Store(cfg.store)
    try:
        added, kept = store.add_items(items, cfg.candidates)
        tokens = store.annotators(cfg.annotators)
        sock = bind(cfg.host, cfg.port)
        app = CollectApp(cfg, store)
        base = f"http://{url_host(sock)}"
        log(f"{added} new items from {cfg.candidates} ({kept} already in the store), {store.count_items()} in {cfg.store}")
        if not cfg.loopback:
            log(f"warning: listening on {cfg.host}, beyond loopback, over plain HTTP: tokens and votes cross the network unencrypted")
        for name in cfg.annotators:
            log(f"  {name}: {base}/login?token={quote(tokens[name])}")
        log(f"serving on {base} (Ctrl-C to stop; every vote is on disk when its page says saved)")
        # No access log: /login's query holds the token.
        config = uvicorn.Config(app.asgi, log_level="warning", access_log=False, lifespan="off", timeout_keep_alive=5,
                                h11_max_incomplete_event_size=16384, server_header=False)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        store.close()
