"""``edgefleet users …``: accounts and roles, from the server's own shell."""

from __future__ import annotations

import sys

import typer

from edgefleet.bootstrap import Container
from edgefleet.cli.common import JsonOption, cli_actor, emit, err_console, run
from edgefleet.db.tables import User
from edgefleet.domain.auth import Role
from edgefleet.errors import NotFoundError
from edgefleet.presenters.users import user_public

app = typer.Typer(help="Manage users and roles.", no_args_is_help=True)
COLUMNS = ("id", "email", "role", "disabled", "mustChangePassword", "lastLoginAt")


def _read_password(from_stdin: bool) -> str | None:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    return None


async def _by_email(c: Container, email: str) -> User:
    for user in await c.accounts.list_users():
        if user.email == email.strip().lower():
            return user
    raise NotFoundError(f"no user with email {email!r}")


@app.command("create")
def create(
    email: str,
    role: Role = typer.Option(Role.VIEWER, help="admin, operator or viewer."),
    admin: bool = typer.Option(False, "--admin", help="Shorthand for --role admin."),
    password_stdin: bool = typer.Option(
        False, "--password-stdin", help="Read the password from standard input."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Create a user; without a password, a one-time password is printed once."""
    password = _read_password(password_stdin)
    chosen = Role.ADMIN if admin else role

    async def work(c: Container) -> dict[str, object]:
        user, generated = await c.accounts.create_user(email, password, chosen)
        await c.audit.record(
            cli_actor(),
            "users.create",
            outcome="success",
            target_type="user",
            target_id=str(user.id),
        )
        out: dict[str, object] = user_public(user)
        if generated:
            out["oneTimePassword"] = generated
        return out

    out = run(work)
    emit(out, as_json, ("id", "email", "role", "oneTimePassword"))
    if "oneTimePassword" in out and not as_json:
        err_console.print("The one-time password is shown once; it must be changed at first login.")


@app.command("list")
def list_users(as_json: bool = JsonOption) -> None:
    """List users."""

    async def work(c: Container) -> list[dict[str, object]]:
        return [user_public(u) for u in await c.accounts.list_users()]

    emit(run(work), as_json, COLUMNS)


@app.command("set-password")
def set_password(
    email: str,
    password_stdin: bool = typer.Option(
        False, "--password-stdin", help="Read the password from standard input."
    ),
) -> None:
    """Set a user's password (asks twice on a terminal)."""
    password = _read_password(password_stdin)
    if password is None:
        if not sys.stdin.isatty():
            err_console.print(
                "[red]error:[/red] no terminal: pass the password with --password-stdin"
            )
            raise typer.Exit(2)
        password = typer.prompt("New password", hide_input=True, confirmation_prompt=True)

    async def work(c: Container) -> None:
        user = await c.accounts.set_password(email, password)
        await c.audit.record(
            cli_actor(),
            "users.set_password",
            outcome="success",
            target_type="user",
            target_id=str(user.id),
        )

    run(work)
    typer.echo(f"password set for {email}")


def _update(email: str, action: str, **changes: object) -> None:
    async def work(c: Container) -> dict[str, object]:
        user = await _by_email(c, email)
        updated = await c.accounts.update_user(user.id, **changes)  # type: ignore[arg-type]
        await c.audit.record(
            cli_actor(),
            f"users.{action}",
            outcome="success",
            target_type="user",
            target_id=str(user.id),
        )
        return user_public(updated)

    emit(run(work), False, COLUMNS)


@app.command("disable")
def disable(email: str) -> None:
    """Disable a user: logins, sessions and tokens stop working."""
    _update(email, "disable", disabled=True)


@app.command("enable")
def enable(email: str) -> None:
    """Enable a disabled user."""
    _update(email, "enable", disabled=False)


@app.command("set-role")
def set_role(email: str, role: Role) -> None:
    """Change a user's role."""
    _update(email, "set_role", role=role)


@app.command("delete")
def delete(email: str) -> None:
    """Delete a user and the user's tokens."""

    async def work(c: Container) -> None:
        user = await _by_email(c, email)
        await c.accounts.delete_user(user.id)
        await c.audit.record(
            cli_actor(),
            "users.delete",
            outcome="success",
            target_type="user",
            target_id=str(user.id),
        )

    run(work)
    typer.echo(f"deleted {email}")
