"""``edgefleet devices …``: register, find and remove gateways."""

from __future__ import annotations

import sys

import typer

from edgefleet.bootstrap import Container
from edgefleet.cli.common import JsonOption, cli_actor, emit, err_console, run
from edgefleet.domain.devicefilter import DeviceFilter
from edgefleet.domain.devices import ConnectionStatus
from edgefleet.domain.query import parse
from edgefleet.presenters.devices import device_public
from edgefleet.services.fleet import Registration

app = typer.Typer(help="Manage gateways.", no_args_is_help=True)
COLUMNS = (
    "uuid",
    "displayName",
    "mac",
    "serialNumber",
    "status",
    "model",
    "softwareVersion",
    "tags",
)


def _row(d: dict[str, object]) -> dict[str, object]:
    props = d.get("properties") or {}
    assert isinstance(props, dict)
    conn = d["connection"]
    assert isinstance(conn, dict)
    return {
        **d,
        "status": conn["status"],
        "model": props.get("modelName", ""),
        "softwareVersion": props.get("softwareVersion", ""),
        "tags": ",".join(d.get("tags") or []),  # type: ignore[arg-type]
    }


@app.command("list")
def list_devices(
    query: str = typer.Option(None, "--query", "-q", help="Fleet query, e.g. 'tag:line-3'."),
    status: ConnectionStatus = typer.Option(None, help="created, online or offline."),
    tag: str = typer.Option(None),
    group_id: int = typer.Option(None, "--group-id"),
    offset: int = typer.Option(0, min=0),
    limit: int = typer.Option(100, min=1, max=1000),
    as_json: bool = JsonOption,
) -> None:
    """List gateways, optionally filtered."""

    async def work(c: Container) -> dict[str, object]:
        f = DeviceFilter(
            status=status.value if status else None,
            tag=tag,
            group_id=group_id,
            query=parse(query) if query else None,
        )
        page = await c.fleet.list_devices(f, offset=offset, limit=limit)
        return {"count": page.total, "data": [device_public(v) for v in page.items]}

    out = run(work)
    if as_json:
        emit(out, True)
        return
    data = out["data"]
    assert isinstance(data, list)
    emit([_row(d) for d in data], False, COLUMNS)
    err_console.print(f"{out['count']} matching")


@app.command("register")
def register(
    mac: str = typer.Option(..., help="MAC address, any spelling."),
    name: str = typer.Option("", help="Display name (default: the MAC)."),
    serial: str = typer.Option("", help="Serial number."),
    description: str = typer.Option(""),
    tag: list[str] = typer.Option([], help="A tag; repeat for several."),
    as_json: bool = JsonOption,
) -> None:
    """Register a gateway: prints its uuid and pre-shared key (shown once)."""

    async def work(c: Container) -> dict[str, object]:
        view, psk = await c.fleet.register_device(
            Registration(
                display_name=name or mac,
                mac=mac,
                serial_number=serial,
                description=description,
                tags=tuple(tag),
            )
        )
        await c.audit.record(
            cli_actor(),
            "devices.create",
            outcome="success",
            target_type="device",
            target_id=view.device.uuid,
        )
        return {**device_public(view), "psk": psk}

    out = run(work)
    emit(out, as_json, ("uuid", "mac", "displayName", "psk"))
    if not as_json:
        err_console.print("The psk is shown once: configure the gateway with it now.")


@app.command("rotate-key")
def rotate_key(uuid: str, as_json: bool = JsonOption) -> None:
    """Give a gateway a new pre-shared key (shown once); the old one stops working at once."""

    async def work(c: Container) -> dict[str, object]:
        psk = await c.fleet.rotate_psk(uuid)
        await c.audit.record(
            cli_actor(),
            "devices.rotate_psk",
            outcome="success",
            target_type="device",
            target_id=uuid,
        )
        return {"uuid": uuid, "psk": psk}

    out = run(work)
    emit(out, as_json, ("uuid", "psk"))
    if not as_json:
        err_console.print("The psk is shown once: configure the gateway with it now.")


@app.command("show")
def show(uuid: str, as_json: bool = JsonOption) -> None:
    """Show one gateway."""

    async def work(c: Container) -> dict[str, object]:
        return device_public(await c.fleet.get_device(uuid))

    out = run(work)
    emit(out if as_json else _row(out), as_json, COLUMNS)


@app.command("delete")
def delete(
    uuids: list[str],
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Deregister gateways (all or none)."""
    if not yes:
        if not sys.stdin.isatty():
            err_console.print(
                "[red]error:[/red] refusing to delete without --yes (no terminal to ask)"
            )
            raise typer.Exit(2)
        typer.confirm(f"Deregister {len(uuids)} gateway(s)?", abort=True)

    async def work(c: Container) -> list[str]:
        deleted = await c.fleet.delete_devices(uuids)
        for u in deleted:
            await c.audit.record(
                cli_actor(), "devices.delete", outcome="success", target_type="device", target_id=u
            )
        return deleted

    typer.echo(f"deleted {len(run(work))} gateway(s)")
