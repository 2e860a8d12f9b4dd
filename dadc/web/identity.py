"""The anonymous visitor's identity: a salted hash of the client address, trusting only the
proxies the deployment says it has (`client_identity(request, secret, hops)` in a handler)."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets
from pathlib import Path


def home_secret(path: str | Path) -> bytes:
    """The per-home salt of client_identity: 32 random bytes, made once at `path` (mode 0600)."""
    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        value = secrets.token_bytes(32)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first: use theirs
            return path.read_bytes()
        with os.fdopen(fd, "wb") as f:
            f.write(value)
        return value


def client_address(request, trusted_proxy_hops: int = 0) -> str:
    """The caller's address as the server can trust it.

    Gradio 6.31 adds no proxy logic of its own: `request.client.host` is the ASGI scope's client,
    which uvicorn (run by launch() with its defaults, proxy_headers on, FORWARDED_ALLOW_IPS
    "127.0.0.1,::1") replaces with the right-most X-Forwarded-For entry that is not a trusted
    host, and only when the TCP peer is loopback. So:

    - directly exposed (trusted_proxy_hops=0): the TCP peer. A remote client's X-Forwarded-For,
      X-Real-IP, Forwarded etc. are ignored. (A process on the same machine can still set one;
      it is the machine's owner. Behind your own proxy on the same host, nginx's
      $proxy_add_x_forwarded_for makes uvicorn report the real client.)
    - behind N proxies that each append the address they saw (trusted_proxy_hops=N): the N-th
      X-Forwarded-For entry from the right, i.e. the address the outermost trusted proxy saw.
      Entries further left were written by the client and are never used. On a Hugging Face Space
      the app sees an internal proxy address (10.x) as the peer and the visitor in X-Forwarded-For
      (see embeddings-benchmark/mteb#4754); Gradio's optional Node SSR proxy forwards headers
      without appending. Hops=1 is the default there (config: DADC_TRUSTED_PROXY_HOPS). If a Space ever had
      two appending layers, hops=1 would give the outer proxy's address: every visitor one
      identity, stricter limits, never a forged one. Too few entries fall back to the peer.
    - X-Real-IP is never used: a proxy that does not overwrite it passes the client's own value.

    IPv6 addresses are reduced to their /64 (one host usually holds a whole /64 and may use any
    address in it); IPv4-mapped IPv6 becomes IPv4."""
    client = getattr(request, "client", None)
    host = str(getattr(client, "host", "") or "unknown")
    if trusted_proxy_hops > 0:
        raw = getattr(request, "request", None)  # gr.Request wraps the fastapi.Request
        headers = getattr(raw, "headers", None) or getattr(request, "headers", {}) or {}
        values = (headers.getlist("x-forwarded-for") if hasattr(headers, "getlist")
                  else [headers.get("x-forwarded-for", "")])
        chain = [h.strip() for v in values if v for h in v.split(",") if h.strip()]
        if len(chain) >= trusted_proxy_hops:
            host = chain[-trusted_proxy_hops]
    host = host.strip()[:100]
    if host.startswith("["):  # "[v6]:port"
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:  # "v4:port" (some proxies add the client's port: drop it)
        host = host.split(":", 1)[0]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if ip.version == 6:
        if ip.ipv4_mapped:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def client_identity(request, secret: bytes | str, trusted_proxy_hops: int = 0) -> str:
    """"anon-<12 hex>": an HMAC-SHA256 of client_address() (see there which header is trusted and
    when) under the per-home `secret`, so the address cannot be read back and ids of two
    deployments cannot be linked. Never from anything the client chooses: not session_hash, not
    a cookie, not a header unless a trusted proxy wrote it. Callers behind one NAT share an id."""
    key = secret.encode() if isinstance(secret, str) else bytes(secret)
    address = client_address(request, trusted_proxy_hops)
    return "anon-" + hmac.new(key, address.encode(), hashlib.sha256).hexdigest()[:12]
