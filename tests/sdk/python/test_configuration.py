"""configuration::* and the `configuration` trigger through the official Python SDK (spec §5.5,
§4.6.7, §8.7): register, set valid and invalid values (the error names the JSON pointer), get with
and without `raw`, list, schema, the trigger, and an external edit of ./config/<id>.yaml."""

from __future__ import annotations

import os
import threading

import pytest
from iii import InvocationError

from conftest import call, wait_function, wait_until

SCHEMA = {
    "type": "object",
    "required": ["url"],
    "properties": {
        "url": {"type": "string", "minLength": 1},
        "pool": {"type": "object", "properties": {"size": {"type": "integer", "minimum": 1}}},
    },
}

os.environ["III_PY_CFG_URL"] = "pg://py-env"


def register(w, cid: str, initial):  # noqa: ANN001, ANN201
    return call(w, "configuration::register", {"id": cid, "name": "Py DB", "description": "py test", "schema": SCHEMA, "initial_value": initial})


def refused(w, fid: str, payload) -> InvocationError:  # noqa: ANN001
    with pytest.raises(InvocationError) as ei:
        call(w, fid, payload)
    return ei.value


def test_register_set_get_list_schema(workers):
    w = workers("py-config")
    e = register(w, "py.db", {"url": "${III_PY_CFG_URL}"})
    assert e["id"] == "py.db" and e["value"] == {"url": "${III_PY_CFG_URL}"}
    assert call(w, "configuration::get", {"id": "py.db"}) == {"id": "py.db", "value": {"url": "pg://py-env"}}
    assert call(w, "configuration::get", {"id": "py.db", "raw": True})["value"] == {"url": "${III_PY_CFG_URL}"}

    r = call(w, "configuration::set", {"id": "py.db", "value": {"url": "pg://b", "pool": {"size": "${III_PY_POOL:3}"}}})
    assert r["old_value"] == {"url": "${III_PY_CFG_URL}"}
    assert call(w, "configuration::get", {"id": "py.db"})["value"] == {"url": "pg://b", "pool": {"size": 3}}

    err = refused(w, "configuration::set", {"id": "py.db", "value": {"url": "pg://c", "pool": {"size": 0}}})
    assert err.code == "SCHEMA_INVALID", err
    assert "/pool/size" in err.message and "minimum" in err.message, err.message
    assert call(w, "configuration::get", {"id": "py.db", "raw": True})["value"]["url"] == "pg://b"
    assert refused(w, "configuration::set", {"id": "py.none", "value": {}}).code == "NOT_REGISTERED"
    assert refused(w, "configuration::get", {"id": "py.none"}).code == "NOT_FOUND"

    register(w, "py.a", {"url": "x"})
    rows = call(w, "configuration::list", {})["configurations"]
    ids = [r["id"] for r in rows]
    assert ids.index("py.a") < ids.index("py.db")
    assert all("value" not in r for r in rows)
    s = call(w, "configuration::schema", {"id": "py.db"})
    assert s == {"id": "py.db", "name": "Py DB", "description": "py test", "schema": SCHEMA}


def test_trigger_and_external_edit(workers, engine):
    w = workers("py-config-watch")
    events: list[dict] = []
    got = threading.Event()

    def on_change(data):  # noqa: ANN001, ANN202
        events.append(data)
        got.set()
        return None

    w.register_function("pycfg::on_change", on_change)
    w.register_trigger({"type": "configuration", "function_id": "pycfg::on_change", "config": {"configuration_id": "py.svc"}})
    wait_function(w, "pycfg::on_change")
    wait_until(
        lambda: any(t["trigger_type"] == "configuration" for t in call(w, "engine::registered-triggers::list", {})["registered_triggers"]),
        what="configuration trigger registered",
    )
    register(w, "py.svc", {"url": "a"})
    assert got.wait(5)
    assert events[0]["event_type"] == "configuration:registered"
    assert events[0]["id"] == "py.svc" and events[0]["schema"] == SCHEMA
    got.clear()
    call(w, "configuration::set", {"id": "py.svc", "value": {"url": "b"}})
    assert got.wait(5)
    assert events[-1]["event_type"] == "configuration:updated"
    assert (events[-1]["old_value"], events[-1]["new_value"]) == ({"url": "a"}, {"url": "b"})

    # An external edit with an invalid value is refused and logged; the old value stays.
    path = engine.workdir / "config" / "py.svc.yaml"
    path.write_text("id: py.svc\nname: Py DB\ndescription: hand edit\nvalue: {url: ''}\n")
    wait_until(lambda: "external edit rejected" in engine.log(), what="the refused edit logged")
    assert "py.svc.yaml" in engine.log()
    assert call(w, "configuration::get", {"id": "py.svc"})["value"] == {"url": "b"}
    # A valid one applies and fires the trigger.
    got.clear()
    path.write_text("id: py.svc\nname: Py DB\ndescription: hand edit\nvalue: {url: 'edited://'}\n")
    assert got.wait(10)
    assert events[-1]["new_value"] == {"url": "edited://"}
    assert call(w, "configuration::get", {"id": "py.svc"})["value"] == {"url": "edited://"}


def test_builtin_http_settings_apply_by_tier(workers, engine):
    """`iii-http` as a configuration entry: CORS applies live, a bad port is refused with its
    pointer, and a new port rebinds (the new one answers the same route, the old one closes)."""
    from conftest import free_port, http_request, port_open

    engine.wait_http()
    w = workers("py-config-http")
    w.register_function("pycfg::hello", lambda req: {"status_code": 200, "body": {"hi": True}})
    w.register_trigger({"type": "http", "function_id": "pycfg::hello", "config": {"api_path": "hi", "http_method": "GET"}})
    wait_until(lambda: http_request("GET", engine.http_url + "/hi")[0] == 200, what="route live")

    value = call(w, "configuration::get", {"id": "iii-http"})["value"]
    assert value["port"] == engine.http_port, value

    live = dict(value, cors={"allowed_origins": ["https://py.example"]})
    r = call(w, "configuration::set", {"id": "iii-http", "value": live})
    assert r["applied"]["tier"] == "live", r
    _, headers, _ = http_request("GET", engine.http_url + "/hi", headers={"Origin": "https://py.example"})
    assert headers.get("access-control-allow-origin") == "https://py.example", headers

    err = refused(w, "configuration::set", {"id": "iii-http", "value": dict(live, port="eighty")})
    assert err.code == "SCHEMA_INVALID" and "/port" in err.message, err
    assert port_open(engine.http_port)

    new_port = free_port()
    r = call(w, "configuration::set", {"id": "iii-http", "value": dict(live, port=new_port)})
    assert r["applied"]["tier"] == "rebind", r
    st, _, body = http_request("GET", f"http://127.0.0.1:{new_port}/hi")
    assert st == 200 and b"hi" in body, (st, body)
    wait_until(lambda: not port_open(engine.http_port), what="old HTTP port closed")
    assert call(w, "configuration::get", {"id": "iii-http"})["value"]["port"] == new_port
