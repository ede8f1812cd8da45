"""``edgefleet tokens …``: API tokens for scripts and brokers."""

from __future__ import annotations

from datetime import datetime, timedelta

import typer

from edgefleet.bootstrap import Container
from edgefleet.cli.common import JsonOption, cli_actor, emit, err_console, run
from edgefleet.cli.users import _by_email
from edgefleet.db.tables import ApiToken
from edgefleet.domain.auth import Principal, PrincipalKind, Role, Scope, permissions_for
from edgefleet.presenters.users import token_public

app = typer.Typer(help="Manage API tokens.", no_args_is_help=True)
COLUMNS = ("id", "prefix", "description", "scope", "userId", "expiresAt", "revokedAt", "lastUsedAt")


async def create_token(
    c: Container, email: str, description: str, scope: Scope, expires: datetime | None
) -> tuple[ApiToken, str]:
    """A new token owned by the user ``email`` (audited as done from the CLI), and its secret."""
    owner = await _by_email(c, email)
    role = Role(owner.role)
    principal = Principal(PrincipalKind.SESSION, owner.id, owner.email, role, permissions_for(role))
    token, secret = await c.accounts.create_token(principal, description, scope, expires)
    await c.audit.record(
        cli_actor(),
        "tokens.create",
        outcome="success",
        target_type="token",
        target_id=str(token.id),
    )
    return token, secret


@app.command("create")
def create(
    user: str = typer.Option(..., "--user", help="Email of the token's owner."),
    scope: Scope = typer.Option(..., help="read, read/write or broker."),
    description: str = typer.Option("", help="Up to 150 characters."),
    expires_in_days: int = typer.Option(0, min=0, help="0 = never expires."),
    as_json: bool = JsonOption,
) -> None:
    """Create a token; its secret is printed once."""

    async def work(c: Container) -> dict[str, object]:
        expires = c.accounts.clock() + timedelta(days=expires_in_days) if expires_in_days else None
        token, secret = await create_token(c, user, description, scope, expires)
        return {**token_public(token), "token": secret}

    out = run(work)
    if as_json:
        emit(out, True)
    else:
        typer.echo(str(out["token"]))
        err_console.print("This token is shown once: store it now.")


@app.command("list")
def list_tokens(
    user: str = typer.Option(None, "--user", help="Only this user's tokens."),
    as_json: bool = JsonOption,
) -> None:
    """List tokens (never their secrets)."""

    async def work(c: Container) -> list[dict[str, object]]:
        owner_id = (await _by_email(c, user)).id if user else None
        viewer = Principal(PrincipalKind.SYSTEM, owner_id or 0, "", Role.ADMIN, frozenset())
        tokens = await c.accounts.list_tokens(viewer, all_users=owner_id is None)
        return [token_public(t) for t in tokens]

    emit(run(work), as_json, COLUMNS)


@app.command("revoke")
def revoke(token_id: int) -> None:
    """Revoke a token: it stops working at once."""

    async def work(c: Container) -> None:
        actor = Principal(PrincipalKind.SYSTEM, 0, "", Role.ADMIN, frozenset())
        await c.accounts.revoke_token(actor, token_id)
        await c.audit.record(
            cli_actor(),
            "tokens.revoke",
            outcome="success",
            target_type="token",
            target_id=str(token_id),
        )

    run(work)
    typer.echo(f"token {token_id} revoked")
