"""tetra commands with no Vigil counterpart: each answers with one clear error saying so
(and what to use instead) rather than click's bare 'No such command'."""
from __future__ import annotations

import click

# tetra command -> why Vigil has none, and what to use
WHY = {
    "policyfilter": "Vigil's pod policy filter is internal to the agent (see `vigil status`)",
    "cgtracker": "Vigil tracks cgroups inside the agent; it has no cgroup tracker map to inspect",
    "cri": "Vigil reads container data from Kubernetes and cgroups, not from a CRI endpoint",
    "rthooks": "Vigil has no OCI runtime-hook integration",
    "policytest": "use `vigil policy dry-run POLICY EVENTS` to replay events through a policy",
}


def _make(name: str) -> click.Command:
    @click.command(name, hidden=True, add_help_option=False,
                   context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
    def cmd() -> None:
        raise click.ClickException(f"`{name}` (a tetra command) is not available in vigil: {WHY[name]}")
    return cmd


COMMANDS = {name: _make(name) for name in WHY}
