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


def decode_info(res: Any) -> dict[str, Any]:
    """GetInfoResponse -> {Name, Version, Probes, Conf, Build} (tetragoninfo.Decode's fields)."""
    return {
        "Name": res.name,
        "Version": res.version,
        "Probes": {p.Name: p.Enabled.value for p in res.probes},  # the proto's field names are Go's
        "Conf": {c.key: _conf_value(c.value) for c in res.conf},
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
