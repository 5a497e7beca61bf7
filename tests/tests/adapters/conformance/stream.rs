use iii_tests::{EngineProc, RawWorker};
use serde_json::json;

use super::store_backends;
use crate::{engine_config, ok};

#[tokio::test]
async fn stream_semantics_are_the_same_on_every_backend() {
    for b in store_backends() {
        let extra = format!(
            "  - name: iii-stream\n    config: {{adapter: {}}}\n",
            b.adapter
        );
        let e = EngineProc::start_with(|ws, _| engine_config(ws, &extra));
        let mut w = RawWorker::connect(&e.url()).await;
        let n = b.name;
        let item = |g: &str, id: &str| json!({"stream_name": "chat", "group_id": g, "item_id": id});
        let mut set = item("r1", "m1");
        set["data"] = json!({"text": "hi"});
        assert_eq!(
            ok(&mut w, "stream::set", set).await,
            json!({"old_value": null, "new_value": {"text": "hi"}}),
            "{n}"
        );
        let mut up = item("r1", "m1");
        up["ops"] = json!([{"type": "set", "path": "edited", "value": true}]);
        let u = ok(&mut w, "stream::update", up).await;
        assert_eq!(
            u["new_value"],
            json!({"text": "hi", "edited": true}),
            "{n}: {u}"
        );
        let mut set = item("r2", "m1");
        set["data"] = json!(3);
        ok(&mut w, "stream::set", set).await;
        assert_eq!(
            ok(&mut w, "stream::get", item("r1", "m1")).await,
            json!({"text": "hi", "edited": true}),
            "{n}"
        );
        assert_eq!(
            ok(
                &mut w,
                "stream::list_groups",
                json!({"stream_name": "chat"})
            )
            .await,
            json!(["r1", "r2"]),
            "{n}"
        );
        assert_eq!(
            ok(&mut w, "stream::list_all", json!({})).await,
            json!({"stream": [{"id": "chat", "groups": ["r1", "r2"]}], "count": 1}),
            "{n}"
        );
        ok(&mut w, "stream::delete", item("r2", "m1")).await;
        assert_eq!(
            ok(
                &mut w,
                "stream::list_groups",
                json!({"stream_name": "chat"})
            )
            .await,
            json!(["r1"]),
            "{n}"
        );
    }
}
