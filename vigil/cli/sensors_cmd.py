"""`vigil sensors` (deprecated, as tetra's): list the agent's sensors; enable, disable and rm
are sent to the agent, which answers that sensors belong to tracing policies."""
from __future__ import annotations

import click

from vigil.api.cliutil import client, server_options

DEPRECATED = 'Command "sensors" is deprecated, please use the tracingpolicy command instead.'


@click.group("sensors", hidden=True)
def sensors() -> None:
    """Manage sensors (deprecated: use tracingpolicy)."""
    click.echo(DEPRECATED, err=True)


@sensors.command("list")
@server_options
def sensors_list(server_address: str | None, timeout: float) -> None:
    """List the agent's sensors: NAME (enabled)|(not enabled) COLLECTION."""
    with client(server_address, timeout) as c:
        for s in c.list_sensors():
            state = "(enabled)" if s.get("enabled") else "(not enabled)"
            click.echo(f"{s.get('name', '')} {state} {s.get('collection', '')}")


def _sensor_rpc(name: str, method: str, done: str | None) -> click.Command:
    @click.command(name)
    @click.argument("sensor")
    @server_options
    def cmd(sensor: str, server_address: str | None, timeout: float) -> None:
        with client(server_address, timeout) as c:
            c.sensor_call(method, sensor)
        if done:
            click.echo(f"sensor {sensor} {done}")
    cmd.help = f"{method.removesuffix('Sensor')} SENSOR (Vigil: sensors belong to tracing policies)."
    return cmd


sensors.add_command(_sensor_rpc("enable", "EnableSensor", "enabled"))
sensors.add_command(_sensor_rpc("disable", "DisableSensor", "disabled"))
sensors.add_command(_sensor_rpc("rm", "RemoveSensor", None))
