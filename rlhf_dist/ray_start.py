"""Starting or joining Ray without exposing anything to the network.

A local cluster runs in Ray's single-machine mode: with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 every Ray process
takes 127.0.0.1 as its node address, and the GCS, raylet, core workers, dashboard agent and runtime-env agent
then listen on loopback only (measured on Ray 2.60: without it, `_node_ip_address="127.0.0.1"` is rewritten to
the machine's address and they listen on every interface). Token authentication is on as well, with a token
made for this process (a 0600 file in a private temporary directory), so other users of the machine cannot
call Ray either. The job's own rendezvous stores bind to the node address too (dist.reserve_port).

A remote cluster (`cluster.address`) is joined as given: its address is not rewritten, an unreachable one is
an error naming it after `timeouts.actor_start_s`, and its authentication is the cluster's own (RAY_AUTH_MODE
and RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH from the environment).
"""
from __future__ import annotations

import atexit
import os
import secrets
import shutil
import socket
import tempfile
import time

from rlhf_dist.dist import local_cluster_env
from rlhf_dist.errors import RLHFError, WaitTimeout

LOOPBACK = "127.0.0.1"
_token_dir: str | None = None  # one token per process: Ray's token loader caches the first one it reads


def _token_path() -> str:
    global _token_dir
    if _token_dir is None:
        _token_dir = tempfile.mkdtemp(prefix="rlhf-dist-ray-")  # mode 0700
        atexit.register(shutil.rmtree, _token_dir, True)
        path = os.path.join(_token_dir, "auth_token")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return os.path.join(_token_dir, "auth_token")


def local_ray_env() -> dict[str, str]:
    """Environment of a local cluster's processes: loopback only, token authentication with this process's token."""
    return {
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # node address = loopback, so every Ray server binds there
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": _token_path(),
        **local_cluster_env(),
    }


def _loopback_driver() -> None:
    """This process's own Ray state resolves the node address to loopback (Ray reads the switch at import)."""
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def _reload_auth_settings() -> None:
    """Ray caches its config and token at import; make this process see the environment just set, as Ray's own
    token set-up does."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def start_local_ray(**init_kwargs) -> None:
    """ray.init for a single machine, on loopback with token authentication; refuses to go on otherwise."""
    import ray

    os.environ.update(local_ray_env())
    _loopback_driver()
    _reload_auth_settings()
    ray.init(_node_ip_address=LOOPBACK, include_dashboard=False, **init_kwargs)
    got = ray.util.get_node_ip_address()
    if got != LOOPBACK:
        ray.shutdown()
        raise RLHFError(f"local Ray took node address {got}, not {LOOPBACK}: refusing to run with Ray exposed")


def _host_port(address: str) -> tuple[str, int] | None:
    host, sep, port = address.rpartition(":")
    if "://" in address or not sep or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def wait_reachable(address: str, deadline_s: float) -> None:
    """Until `deadline_s`, try a TCP connection to the cluster's GCS; an error naming the address after that."""
    hp = _host_port(address)
    if hp is None:  # "auto", "ray://..." and the like: Ray resolves and connects them
        return
    t0, last = time.monotonic(), None
    while time.monotonic() - t0 < deadline_s:
        try:
            with socket.create_connection(hp, timeout=max(0.1, min(5.0, deadline_s - (time.monotonic() - t0)))):
                return
        except OSError as e:
            last = e
            time.sleep(min(1.0, max(0.0, deadline_s - (time.monotonic() - t0))))
    raise WaitTimeout(
        f"cluster.address {address}: no Ray cluster answered within {deadline_s:g} s (timeouts.actor_start_s): "
        f"{type(last).__name__}: {last}"
    )


def join_remote_ray(address: str, deadline_s: float) -> None:
    """ray.init(address) with a deadline. A loopback address stays loopback (Ray would rewrite it to the
    machine's address otherwise), and then this driver also listens on loopback only."""
    import ray

    wait_reachable(address, deadline_s)
    hp = _host_port(address)
    if hp is not None and hp[0] in (LOOPBACK, "localhost", "::1"):
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        _loopback_driver()
    # Ray's own GCS connection retries, about one a second, are bounded by the same deadline.
    os.environ.setdefault("RAY_gcs_server_port_wait_time_s", str(max(1, int(deadline_s))))
    ray.init(address=address, log_to_driver=True)
