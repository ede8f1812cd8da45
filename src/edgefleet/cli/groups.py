"""``edgefleet groups …``: groups of gateways (one group per gateway)."""

from __future__ import annotations

import typer

from edgefleet.bootstrap import Container
from edgefleet.cli.common import JsonOption, cli_actor, emit, run
from edgefleet.presenters.groups import group_public

app = typer.Typer(help="Manage groups.", no_args_is_help=True)


def _row(g: dict[str, object]) -> dict[str, object]:
    ds, ts = g["deviceStatus"], g["taskStatus"]
    assert isinstance(ds, dict) and isinstance(ts, dict)
    return {
        "id": g["id"],
        "name": g["name"],
        "devices": ds["totalCount"],
        "online": ds["onlineCount"],
        "offline": ds["offlineCount"],
        "activeTasks": ts["activeCount"],
        "description": g["description"],
    }


async def _audit(c: Container, action: str, target: object) -> None:
    await c.audit.record(
        cli_actor(),
        f"groups.{action}",
        outcome="success",
        target_type="group",
        target_id=str(target),
    )


@app.command("list")
def list_groups(as_json: bool = JsonOption) -> None:
    """List groups with their device and task counters."""

    async def work(c: Container) -> list[dict[str, object]]:
        _, views = await c.fleet.list_groups(offset=0, limit=1000)
        return [group_public(v) for v in views]

    out = run(work)
    emit(out if as_json else [_row(g) for g in out], as_json)


@app.command("create")
def create(name: str, description: str = typer.Option(""), as_json: bool = JsonOption) -> None:
    """Create a group."""

    async def work(c: Container) -> dict[str, object]:
        view = await c.fleet.create_group(name, description)
        await _audit(c, "create", view.group.id)
        return group_public(view)

    out = run(work)
    emit(out if as_json else _row(out), as_json)


@app.command("delete")
def delete(ids: list[int]) -> None:
    """Delete groups (refused while one has unfinished tasks)."""

    async def work(c: Container) -> None:
        await c.fleet.delete_groups(ids)
        for i in ids:
            await _audit(c, "delete", i)

    run(work)
    typer.echo(f"deleted {len(ids)} group(s)")


@app.command("add")
def add(group_id: int, uuids: list[str], as_json: bool = JsonOption) -> None:
    """Add gateways to a group; prints the group's members."""

    async def work(c: Container) -> list[str]:
        members = await c.fleet.add_to_group(group_id, uuids)
        await _audit(c, "add_devices", group_id)
        return members

    members = run(work)
    emit(members if as_json else [{"uuid": u} for u in members], as_json)


@app.command("remove")
def remove(group_id: int, uuids: list[str], as_json: bool = JsonOption) -> None:
    """Remove gateways from a group; prints the group's members."""

    async def work(c: Container) -> list[str]:
        members = await c.fleet.remove_from_group(group_id, uuids)
        await _audit(c, "remove_devices", group_id)
        return members

    members = run(work)
    emit(members if as_json else [{"uuid": u} for u in members], as_json)


@app.command("devices")
def devices(group_id: int, as_json: bool = JsonOption) -> None:
    """List the uuids of a group's gateways."""

    async def work(c: Container) -> list[str]:
        return await c.fleet.group_device_uuids(group_id)

    members = run(work)
    emit(members if as_json else [{"uuid": u} for u in members], as_json)
