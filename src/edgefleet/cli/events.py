"""``edgefleet events …``: the event log's retention, by hand."""

from __future__ import annotations

import typer

from edgefleet.bootstrap import Container
from edgefleet.cli.common import JsonOption, cli_actor, emit, run

app = typer.Typer(help="Manage the event log.", no_args_is_help=True)


@app.command("purge")
def purge(
    older_than: float = typer.Option(
        None,
        "--older-than",
        metavar="DAYS",
        help="Delete events older than this many days (default: EDGEFLEET_EVENTS__RETENTION_DAYS).",
    ),
    as_json: bool = JsonOption,
) -> None:
    """Delete old events now, in batches; open alarms are kept whatever their age."""

    if older_than is not None and older_than <= 0:
        raise typer.BadParameter("must be more than 0 days", param_hint="--older-than")

    async def work(c: Container) -> dict[str, object]:
        if older_than is not None:
            c.events.settings = c.events.settings.model_copy(update={"retention_days": older_than})
        days = c.events.settings.retention_days
        deleted = await c.events.purge()
        if days:
            await c.audit.record(
                cli_actor(),
                "events.purge",
                outcome="success",
                target_type="event",
                detail={"olderThanDays": days, "deleted": deleted},
            )
        return {"deleted": deleted, "olderThanDays": days}

    out = run(work)
    if as_json:
        emit(out, True)
    elif not out["olderThanDays"]:
        typer.echo("retention is off (EDGEFLEET_EVENTS__RETENTION_DAYS=0): nothing deleted")
    else:
        typer.echo(
            f"deleted {out['deleted']} event(s) older than {out['olderThanDays']:g} days "
            "(open alarms kept)"
        )
