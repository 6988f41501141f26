"""Listening sockets for a `--server-address`, with the rules the gRPC server has always
applied: `host:port` must be a loopback address unless remote clients are allowed; a
`unix:` socket is made mode 0600 before it listens (the API can load enforcement
policies: root only), a stale socket of an earlier run is replaced; TLS only on TCP.

TCP sockets have SO_REUSEPORT, so several serving processes can share one port (the
kernel spreads connections between them), as grpcio's listeners do.
"""
from __future__ import annotations

import errno
import ipaddress
import os
import socket
from typing import Any

from vigil.api.server import ServerError, clear_unix_path, is_loopback, unix_path


def bind(address: str, *, tls: bool = False, allow_remote: bool = False) -> tuple[list[socket.socket], str]:
    """Bound (not yet listening) sockets for `address`, and the address as clients dial it
    (the real port for ":0")."""
    path = unix_path(address)
    if path is not None:
        if tls:
            raise ServerError("--server-tls-* applies to a TCP --server-address, not a unix socket")
        return [_bind_unix(path, address)], f"unix://{path}"
    host, sep, port_s = address.rpartition(":")
    if not sep or not port_s.isdigit():
        raise ServerError(f"--server-address {address!r}: expected host:port or unix:///path")
    if not allow_remote and not is_loopback(host):
        raise ServerError(f"--server-address {address}: listens beyond this host; the API can load "
                          "enforcement policies, so only loopback addresses are allowed unless "
                          "--server-allow-remote is set (use it with --server-tls-* and client certificates)")
    port = int(port_s)
    try:
        infos = socket.getaddrinfo(host.strip("[]") or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except OSError as e:
        raise ServerError(f"cannot listen on {address}: {e}") from None
    socks: list[socket.socket] = []
    seen = set()
    errors = []
    for family, _type, proto, _canon, sa in infos:
        if (family, sa[0]) in seen or family not in (socket.AF_INET, socket.AF_INET6):
            continue
        seen.add((family, sa[0]))
        s = socket.socket(family, socket.SOCK_STREAM, proto)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind((sa[0], port, *sa[2:]))
        except OSError as e:
            s.close()
            if e.errno == errno.EADDRNOTAVAIL:  # e.g. ::1 on a host without IPv6
                continue
            errors.append(f"{sa[0]}: {e.strerror or e}")
            continue
        if not port:  # ":0": every family on the port the first one got
            port = s.getsockname()[1]
        socks.append(s)
    if not socks:
        raise ServerError(f"cannot listen on {address}" + (f" ({'; '.join(errors)})" if errors else ""))
    return socks, f"{host}:{port}"


def refuse_if_taken(address: str) -> None:
    """ServerError when something already accepts connections at `address`: another agent's
    unix socket would be replaced (its clients cut off), and its TCP port shared through
    SO_REUSEPORT (connections spread over both agents). Asked once, before the agent's
    serving processes bind: they share the port among themselves, and one started again
    finds only its own dead socket."""
    path = unix_path(address)
    targets: list[tuple[int, Any]] = []
    if path is not None:
        targets.append((socket.AF_UNIX, path))
    else:
        host, sep, port_s = address.rpartition(":")
        if not sep or not port_s.isdigit() or int(port_s) == 0:
            return  # (a bad address is bind()'s to report; port 0 is never taken)
        host = host.strip("[]")
        try:
            infos = socket.getaddrinfo(host or None, int(port_s), type=socket.SOCK_STREAM,
                                       flags=0 if host else socket.AI_PASSIVE)
        except OSError:
            return
        for info in infos:
            fam, sa = int(info[0]), info[4]
            if fam not in (socket.AF_INET, socket.AF_INET6):
                continue
            if ipaddress.ip_address(str(sa[0]).split("%")[0]).is_unspecified:  # a wildcard answers on loopback
                sa = ("127.0.0.1" if fam == socket.AF_INET else "::1", *sa[1:])
            targets.append((fam, sa))
    for family, target in targets:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(1.0)
            try:
                s.connect(target)
            except OSError:
                continue  # nobody there (ECONNREFUSED, a stale socket file, no such file, ...)
        raise ServerError(f"cannot listen on {address}: another process is listening there "
                          "(another vigil agent?); stop it or choose another --server-address")


def _bind_unix(path: str, address: str) -> socket.socket:
    clear_unix_path(path, address)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.bind(path)
        os.chmod(path, 0o600)  # before listen(): nobody else can ever connect
    except OSError as e:
        s.close()
        raise ServerError(f"cannot listen on {address}: {e.strerror or e}") from None
    return s
