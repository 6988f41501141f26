"""`vigil info`: the agent's GetInfo as one JSON object, in the shape tetra's `info` prints."""
from __future__ import annotations

import json
from typing import Any

import click

from vigil.api.cliutil import client, server_options


def _conf_value(any_value: Any) -> Any:
    from google.protobuf import struct_pb2, wrappers_pb2

    for cls in (wrappers_pb2.StringValue, wrappers_pb2.Int64Value, wrappers_pb2.BoolValue):
        if any_value.Is(cls.DESCRIPTOR):
            msg = cls()
            any_value.Unpack(msg)
            return msg.value
    if any_value.Is(struct_pb2.ListValue.DESCRIPTOR):
        from google.protobuf import json_format

        lst = struct_pb2.ListValue()
        any_value.Unpack(lst)
        return json_format.MessageToDict(lst)
    return f"unknown value type: {any_value.type_url}"


def _key(item: tuple[str, Any]) -> str:
    return item[0]


def decode_info(res: Any) -> dict[str, Any]:
    """GetInfoResponse -> {Name, Version, Probes, Conf, Build} (tetragoninfo.Decode's fields).
    Probes and Conf are Go maps in tetra, which prints them with their keys sorted."""
    return {
        "Name": res.name,
        "Version": res.version,
        "Probes": dict(sorted(((p.Name, p.Enabled.value) for p in res.probes), key=_key)),  # Go-cased proto fields
        "Conf": dict(sorted(((c.key, _conf_value(c.value)) for c in res.conf), key=_key)),
        "Build": {"GoVersion": res.build.go_version, "Commit": res.build.commit,
                  "Time": res.build.time, "Modified": res.build.modified},
    }


@click.command("info")
@server_options
def info(server_address: str | None, timeout: float) -> None:
    """Print the agent's information (name, version, probes, configuration, build) as JSON."""
    with client(server_address, timeout) as c:
        res = c.info()
    click.echo(json.dumps(decode_info(res), separators=(",", ":"), default=str))
