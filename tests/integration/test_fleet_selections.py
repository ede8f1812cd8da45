"""What the console's gateway list asks of the API, on SQLite and PostgreSQL: lists sorted by
any column (each order read from an index, not by sorting the fleet), bulk changes to a
selection refused (409, nothing changed) once the selection no longer matches the query it was
made from, one change to many gateways, tasks on an empty target refused, and rollout
previews audited as previews."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, text

from edgefleet.bootstrap import Container
from edgefleet.db.engine import Database
from edgefleet.db.repos.devices import SORT_COLUMNS, DeviceRepo, order_clauses
from edgefleet.db.tables import Device, Group
from edgefleet.domain.devicefilter import DeviceFilter, DeviceOrder
from edgefleet.domain.devices import SORT_KEYS
from edgefleet.domain.tasks import TaskKind
from edgefleet.services.fleet import Registration
from tests.conftest import Caller


async def register(c: Container, names: list[str], tags: tuple[str, ...] = ()) -> list[str]:
    out: list[str] = []
    for name in names:
        view, _ = await c.fleet.register_device(
            Registration(
                display_name=name, mac=f"0090e8{len(out) + 100 * len(names):06x}", tags=tags
            )
        )
        out.append(view.device.uuid)
    return out


async def line3(c: Container) -> tuple[list[str], str]:
    """Three gateways tagged line-3 and one not; their uuids (a, b, c, d)."""
    tagged = await register(c, ["a", "b", "c"], tags=("line-3",))
    (other,) = await register(c, ["d"])
    return [*tagged, other], "tag:line-3"


# --- sorting and paging -------------------------------------------------------------------------


async def test_the_api_sorts_by_any_column_both_ways(
    container: Container, client: httpx.AsyncClient, writer: Caller
) -> None:
    names = ["delta", "alpha", "charlie", "bravo"]
    uuids = await register(container, names)
    async with container.db.session() as s:  # models as gateways would report them
        for uuid, model in zip(uuids, ["UC-2", "UC-1", "UC-1", "UC-3"], strict=True):
            device = await s.get(Device, uuid)
            assert device is not None
            device.model_name = model

    async def order(sort: str, **params: Any) -> list[str]:
        r = await client.get(
            "/api/v1/devices", headers=writer.headers, params={"sort": sort, **params}
        )
        assert r.status_code == 200, r.text
        return [d["displayName"] for d in r.json()["data"]]

    assert await order("name") == ["alpha", "bravo", "charlie", "delta"]
    assert await order("-name") == ["delta", "charlie", "bravo", "alpha"]
    assert await order("created") == names
    assert await order("-created") == names[::-1]
    by_model = await order("model")  # ties broken by uuid, the same way on every page
    assert [n for n in by_model[:2]] == sorted(
        ["alpha", "charlie"], key=lambda n: uuids[names.index(n)]
    )
    assert by_model[2:] == ["delta", "bravo"]
    assert await order("name", offset=1, limit=2) == ["bravo", "charlie"]
    bad = await client.get("/api/v1/devices", headers=writer.headers, params={"sort": "colour"})
    assert bad.status_code == 400 and "sort must be one of" in bad.json()["message"]


async def _plan(db: Database, key: str, descending: bool) -> str:
    """The query plan of one page of the list in this order (index scans only, if possible)."""
    order = DeviceOrder(key, descending)
    stmt = select(Device).order_by(*order_clauses(order)).offset(40).limit(50)
    async with db.engine.connect() as conn:
        sql = str(stmt.compile(conn.engine, compile_kwargs={"literal_binds": True}))
        if conn.dialect.name == "sqlite":
            rows = await conn.execute(text(f"EXPLAIN QUERY PLAN {sql}"))
            return "\n".join(str(r[-1]) for r in rows)
        # the tables of a test are tiny: forbid sorting to see whether an index gives the order
        await conn.execute(text("SET LOCAL enable_sort = off"))
        rows = await conn.execute(text(f"EXPLAIN {sql}"))
        plan = "\n".join(str(r[0]) for r in rows)
        await conn.rollback()
        return plan


@pytest.mark.parametrize("descending", [False, True])
async def test_every_order_of_the_list_is_read_from_an_index(
    database: Database, descending: bool
) -> None:
    """A page sorted by any column but the group's name (a join) never sorts the fleet: at
    100,000 gateways that is the difference between reading 50 index entries and sorting all."""
    assert set(SORT_COLUMNS) | {"group"} == set(SORT_KEYS)
    for key in SORT_COLUMNS:
        plan = await _plan(database, key, descending)
        if database.engine.dialect.name == "sqlite":
            assert "TEMP B-TREE" not in plan and "USING INDEX" in plan, (key, plan)
        else:
            assert "Sort" not in plan and "Index Scan" in plan, (key, plan)


async def test_the_api_list_reads_the_pages_and_tags_the_objects_give(
    container: Container,
) -> None:
    """The API's list (``device_rows``: Core rows, tags in the page's statement) gives, for
    every order both ways, with and without a filter, at any offset, the gateways, the count
    and the tags (in tag order) that the list of ``Device`` objects gives."""
    uuids = await register(container, [f"gw{i}" for i in range(7)])
    await container.fleet.update_device(uuids[0], tags=["zeta", "Alpha", "m-1"])
    await container.fleet.update_device(uuids[4], tags=["line-3"])
    group = await container.fleet.create_group("g")
    await container.fleet.add_to_group(group.group.id, uuids[2:5])
    for key in SORT_KEYS:
        for descending in (False, True):
            for f in (DeviceFilter(), DeviceFilter(partial={"displayName": "gw"})):
                for offset, limit in ((0, 50), (2, 3), (6, 5)):
                    order = DeviceOrder(key, descending)
                    objects = await container.fleet.list_devices(
                        f, offset=offset, limit=limit, order=order
                    )
                    rows = await container.fleet.device_rows(
                        f, offset=offset, limit=limit, order=order
                    )
                    want = [(v.device.uuid, v.tags) for v in objects.items]
                    got = [(r.record.uuid, r.tags) for r in rows.items]
                    assert (rows.total, got) == (objects.total, want), (key, descending, offset)
                    assert rows.total == 7 and len(got) == min(limit, 7 - offset)
    listed = await container.fleet.device_rows(DeviceFilter(uuid=uuids[0]), offset=0, limit=1)
    assert sorted(listed.items[0].tags) == ["Alpha", "m-1", "zeta"]


async def test_the_list_by_group_name_pages_as_the_join_would_sort_it(
    container: Container, database: Database
) -> None:
    """Sorted by group name the list is read group by group (no join sorting the fleet): every
    page, both ways, is the page the join's order gives, gateways without a group last."""
    uuids = await register(container, [f"gw{i}" for i in range(11)])
    members = {"b-line": uuids[0:3], "A-line": uuids[3:5], "c-line": uuids[5:9]}
    for name, who in members.items():
        group = await container.fleet.create_group(name)
        await container.fleet.add_to_group(group.group.id, who)
    await container.fleet.create_group("empty")  # no member: never on a page
    for descending in (False, True):
        order = DeviceOrder("group", descending)
        async with database.session() as s:
            expected = list(
                await s.scalars(
                    select(Device.uuid)
                    .outerjoin(Group, Group.id == Device.group_id)
                    .order_by(*order_clauses(order))
                )
            )
        assert set(expected[-2:]) == set(uuids[9:])  # without a group: last both ways
        for offset in range(0, 12):
            for limit in (1, 2, 4, 50):
                async with database.session() as s:
                    total, page = await DeviceRepo(s).page(
                        DeviceFilter(), offset=offset, limit=limit, order=order
                    )
                assert total == 11
                assert [d.uuid for d in page] == expected[offset : offset + limit], (
                    descending,
                    offset,
                    limit,
                )
        async with database.session() as s:  # a filter counts and pages the same way
            total, page = await DeviceRepo(s).page(
                DeviceFilter(partial={"displayName": "gw1"}), offset=0, limit=50, order=order
            )
        assert total == 2 and {d.uuid for d in page} == {uuids[1], uuids[10]}


async def test_a_groups_members_are_read_in_uuid_order_from_an_index(database: Database) -> None:
    """One group's part of a page sorted by group name: an index range, not a sort."""
    stmt = (
        select(Device).where(Device.group_id == 7).order_by(Device.uuid.desc()).offset(40).limit(50)
    )
    async with database.engine.connect() as conn:
        sql = str(stmt.compile(conn.engine, compile_kwargs={"literal_binds": True}))
        if conn.dialect.name == "sqlite":
            rows = await conn.execute(text(f"EXPLAIN QUERY PLAN {sql}"))
            plan = "\n".join(str(r[-1]) for r in rows)
            assert "TEMP B-TREE" not in plan and "ix_devices_group_id_uuid" in plan, plan
        else:
            await conn.execute(text("SET LOCAL enable_sort = off"))
            rows = await conn.execute(text(f"EXPLAIN {sql}"))
            plan = "\n".join(str(r[0]) for r in rows)
            await conn.rollback()
            assert "Sort" not in plan and "ix_devices_group_id_uuid" in plan, plan


async def test_a_gateway_name_is_found_from_an_index(database: Database) -> None:
    """The Events page filters by a gateway's name (any letter case) on each live refresh, up
    to twice a second: at 100,000 gateways a scan of the fleet per refresh took 0.7 s, so
    the exact-name lookup must read an index on the lowered name."""
    stmt = (
        select(Device.uuid)
        .where(func.lower(Device.display_name) == "press-07")
        .order_by(Device.uuid)
        .limit(101)
    )
    async with database.engine.connect() as conn:
        sql = str(stmt.compile(conn.engine, compile_kwargs={"literal_binds": True}))
        if conn.dialect.name == "sqlite":
            rows = await conn.execute(text(f"EXPLAIN QUERY PLAN {sql}"))
            plan = "\n".join(str(r[-1]) for r in rows)
        else:  # the tables of a test are tiny: forbid scanning them whole
            await conn.execute(text("SET LOCAL enable_seqscan = off"))
            rows = await conn.execute(text(f"EXPLAIN {sql}"))
            plan = "\n".join(str(r[0]) for r in rows)
            await conn.rollback()
    assert "ix_devices_lower_display_name_uuid" in plan, plan


# --- selections -------------------------------------------------------------------------------


async def _rollout(
    client: httpx.AsyncClient, who: Caller, target: dict[str, Any]
) -> httpx.Response:
    return await client.post(
        "/api/v1/rollouts",
        headers=who.headers,
        json={"target": target, "payload": {"method": "post", "resource": "/system/reboot"}},
    )


async def test_a_selection_acts_only_while_it_matches_its_query(
    container: Container, client: httpx.AsyncClient, writer: Caller
) -> None:
    (a, b, c, d), query = await line3(container)
    picked = {"devices": [a, b, c], "query": query, "exact": True}
    plan = await client.post(
        "/api/v1/rollouts",
        headers=writer.headers,
        json={"target": picked, "payload": {"method": "get", "resource": "/x"}, "dryRun": True},
    )
    assert plan.status_code == 200 and plan.json()["total"] == 3, plan.text

    # b leaves the query after it was selected: every bulk action on the old selection is refused
    await container.fleet.update_device(b, tags=[])
    refused = await _rollout(client, writer, picked)
    assert refused.status_code == 409, refused.text
    assert b in refused.json()["detail"] and "no longer match" in refused.json()["detail"]
    params = {"q": query, "exact": "true"}
    group = (await container.fleet.create_group("line 3")).group.id
    r = await client.post(
        f"/api/v1/groups/{group}/devices", headers=writer.headers, params=params, json=[a, b, c]
    )
    assert r.status_code == 409 and b in r.json()["message"], r.text
    r = await client.request(
        "DELETE", "/api/v1/devices", headers=writer.headers, params=params, json=[a, b, c]
    )
    assert r.status_code == 409, r.text
    r = await client.patch(
        "/api/v1/devices",
        headers=writer.headers,
        json={"devices": [a, b, c], "query": query, "exact": True, "addTags": ["checked"]},
    )
    assert r.status_code == 409, r.text
    # nothing changed: no task, no member, none deleted, no tag
    total, _ = await container.tasks.list_tasks(kinds=list(TaskKind), limit=10)
    assert total == 0
    assert await container.fleet.group_device_uuids(group) == []
    result = await container.fleet.list_devices(DeviceFilter(), offset=0, limit=10)
    assert result.total == 4 and all("checked" not in v.tags for v in result.items)

    # what still matches may go ahead; "every gateway that matches" may not once one more does
    assert (await _rollout(client, writer, {"devices": [a, c], "query": query})).status_code == 201
    await container.fleet.update_device(d, tags=["line-3"])
    r = await _rollout(client, writer, {"devices": [a, c], "query": query, "exact": True})
    assert r.status_code == 409 and "1 more gateways match it now" in r.json()["detail"]
    r = await client.post(
        f"/api/v1/groups/{group}/devices",
        headers=writer.headers,
        params={"q": query, "exact": "true"},
        json=[a, c, d],
    )
    assert r.status_code == 200 and sorted(r.json()) == sorted([a, c, d]), r.text
    # a selection from the whole list ("" as its query) refuses a gateway deleted since
    await container.fleet.delete_devices([c])
    r = await client.request(
        "DELETE", "/api/v1/devices", headers=writer.headers, params={"q": ""}, json=[a, c]
    )
    assert r.status_code == 409 and c in r.json()["message"]
    assert await container.fleet.get_device(a)


async def test_exact_needs_the_query_it_refers_to(
    container: Container, client: httpx.AsyncClient, writer: Caller
) -> None:
    (a, *_), _ = await line3(container)
    r = await _rollout(client, writer, {"devices": [a], "exact": True})
    assert r.status_code == 422 and "exact needs devices and the query" in r.text
    r = await client.request(
        "DELETE", "/api/v1/devices", headers=writer.headers, params={"exact": "true"}, json=[a]
    )
    assert r.status_code == 400 and "exact needs q" in r.json()["message"]
    r = await _rollout(client, writer, {"query": " "})
    assert r.status_code == 422 and "query must not be empty" in r.text


async def test_one_change_to_many_gateways(
    container: Container, client: httpx.AsyncClient, writer: Caller
) -> None:
    a, b = await register(container, ["a", "b"], tags=("old", "keep"))
    await container.fleet.update_device(a, attributes={"site": "Hsinchu", "rack": 3})
    r = await client.patch(
        "/api/v1/devices",
        headers=writer.headers,
        json={
            "devices": [a, b],
            "addTags": ["line-3"],
            "removeTags": ["old"],
            "attributes": {"site": "Tainan", "rack": None, "owner": "ops"},
            "description": "moved to Tainan",
        },
    )
    assert r.status_code == 200 and sorted(r.json()) == sorted([a, b]), r.text
    for uuid in (a, b):
        view = await container.fleet.get_device(uuid)
        assert view.tags == ["keep", "line-3"]
        assert view.device.attributes == {"site": "Tainan", "owner": "ops"}  # rack removed
        assert view.device.description == "moved to Tainan"
    # all or none: an unknown gateway changes nothing
    r = await client.patch(
        "/api/v1/devices",
        headers=writer.headers,
        json={"devices": [a, "no-such-gateway"], "addTags": ["never"]},
    )
    assert r.status_code == 409 and "no-such-gateway" in r.json()["detail"]
    assert "never" not in (await container.fleet.get_device(a)).tags
    r = await client.patch("/api/v1/devices", headers=writer.headers, json={"devices": [a]})
    assert r.status_code == 422 and "nothing to change" in r.text
    r = await client.patch(
        "/api/v1/devices", headers=writer.headers, json={"devices": [a], "addTags": ["bad tag"]}
    )
    assert r.status_code == 400 and "bad tag" in r.json()["detail"]


# --- tasks on nothing, previews ---------------------------------------------------------------


async def test_a_task_on_an_empty_target_is_refused_clearly(
    container: Container, client: httpx.AsyncClient, writer: Caller
) -> None:
    group = (await container.fleet.create_group("empty line")).group.id
    reboot = {"method": "post", "resource": "/system/reboot"}
    r = await client.post(
        "/api/v1/groupTasks", headers=writer.headers, json={"groupId": group, "payload": reboot}
    )
    assert r.status_code == 409, r.text
    assert r.json() == {"message": "group empty line has no gateway: nothing to run the task on"}
    r = await _rollout(client, writer, {"groupId": group})
    assert r.status_code == 409 and r.json()["detail"] == (
        "group empty line has no gateway: nothing to run the task on"
    )
    r = await _rollout(client, writer, {"query": 'name = "nobody"'})
    assert r.status_code == 409 and "fleet query name" in r.json()["detail"]
    total, _ = await container.tasks.list_tasks(kinds=list(TaskKind), limit=10)
    assert total == 0  # nothing reported "success 100 %"
    # a preview still says what it would reach: nothing
    r = await client.post(
        "/api/v1/rollouts",
        headers=writer.headers,
        json={"target": {"groupId": group}, "payload": reboot, "dryRun": True},
    )
    assert r.status_code == 200 and r.json()["total"] == 0


async def test_a_rollout_preview_is_audited_as_a_preview(
    container: Container, client: httpx.AsyncClient, writer: Caller, admin: Caller
) -> None:
    _, query = await line3(container)
    body = {"target": {"query": query}, "payload": {"method": "post", "resource": "/system/reboot"}}
    preview = await client.post(
        "/api/v1/rollouts", headers=writer.headers, json={**body, "dryRun": True}
    )
    assert preview.status_code == 200
    created = await client.post("/api/v1/rollouts", headers=writer.headers, json=body)
    assert created.status_code == 201
    r = await client.get("/api/v1/audit", headers=admin.headers)
    actions = [e["action"] for e in r.json()["data"] if e["action"].startswith("rollouts.")]
    assert actions == ["rollouts.create", "rollouts.preview"]  # newest first
