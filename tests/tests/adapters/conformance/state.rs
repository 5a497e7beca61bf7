use iii_tests::{EngineProc, RawWorker};
use serde_json::json;

use super::store_backends;
use crate::{engine_config, ok};

#[tokio::test]
async fn state_semantics_are_the_same_on_every_backend() {
    for b in store_backends() {
        let extra = format!(
            "  - name: iii-state\n    config: {{adapter: {}}}\n",
            b.adapter
        );
        let e = EngineProc::start_with(|ws, _| engine_config(ws, &extra));
        let mut w = RawWorker::connect(&e.url()).await;
        let n = b.name;
        assert_eq!(
            ok(
                &mut w,
                "state::set",
                json!({"scope": "u", "key": "a", "value": {"n": 1}})
            )
            .await,
            json!({"old_value": null, "new_value": {"n": 1}}),
            "{n}"
        );
        assert_eq!(
            ok(
                &mut w,
                "state::set",
                json!({"scope": "u", "key": "a", "value": {"n": 2}})
            )
            .await,
            json!({"old_value": {"n": 1}, "new_value": {"n": 2}}),
            "{n}"
        );
        assert_eq!(
            ok(&mut w, "state::get", json!({"scope": "u", "key": "a"})).await,
            json!({"n": 2}),
            "{n}"
        );
        let u = ok(
            &mut w,
            "state::update",
            json!({"scope": "u", "key": "a", "ops": [
                {"type": "increment", "path": "n", "by": 3},
                {"type": "merge", "path": ["m"], "value": {"x": 1}},
                {"type": "append", "path": ["l"], "value": 7},
                {"type": "increment", "path": "m", "by": 1}
            ]}),
        )
        .await;
        assert_eq!(u["old_value"], json!({"n": 2}), "{n}");
        assert_eq!(
            u["new_value"],
            json!({"n": 5, "m": {"x": 1}, "l": [7]}),
            "{n}: {u}"
        );
        assert_eq!(u["errors"].as_array().map(Vec::len), Some(1), "{n}: {u}");
        ok(
            &mut w,
            "state::set",
            json!({"scope": "t", "key": "b", "value": 1}),
        )
        .await;
        assert_eq!(
            ok(&mut w, "state::list_groups", json!({})).await["groups"],
            json!(["t", "u"]),
            "{n}"
        );
        assert_eq!(
            ok(&mut w, "state::delete", json!({"scope": "t", "key": "b"})).await,
            json!(1),
            "{n}"
        );
        assert_eq!(
            ok(&mut w, "state::list_groups", json!({})).await["groups"],
            json!(["u"]),
            "{n}"
        );
        assert_eq!(
            ok(&mut w, "state::list", json!({"scope": "u"})).await,
            json!([{"n": 5, "m": {"x": 1}, "l": [7]}]),
            "{n}"
        );
    }
}
