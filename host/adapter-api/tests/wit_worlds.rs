//! Every world an adapter trait names exists in the repository's WIT, parses with its `deps/`,
//! and exports the interfaces the host will call.

use std::path::Path;

use iii_adapter_api::{
    AdapterWorld, LockWorld, PolicyWorld, PubSubWorld, QueueWorld, StateWorld, StreamWorld,
};
use wit_parser::{Resolve, WorldItem, WorldKey};

/// Parses `wit/<dir>` and returns `(package@version world name, exported interfaces, imported
/// interfaces)` for `world`.
fn world_of(dir: &str, world: &str) -> (String, Vec<String>, Vec<String>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../wit")
        .join(dir);
    let mut r = Resolve::new();
    let (pkg, _) = r
        .push_dir(&path)
        .unwrap_or_else(|e| panic!("{} does not parse: {e:?}", path.display()));
    let w = r
        .select_world(&[pkg], Some(world))
        .unwrap_or_else(|e| panic!("{dir} has no world {world}: {e:?}"));
    let p = &r.packages[pkg].name;
    let full = format!(
        "{}:{}/{}@{}",
        p.namespace,
        p.name,
        r.worlds[w].name,
        p.version
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default()
    );
    let names = |items: &wit_parser::IndexMap<WorldKey, WorldItem>| -> Vec<String> {
        items
            .iter()
            .filter_map(|(k, v)| match v {
                WorldItem::Interface { .. } => Some(r.name_world_key(k)),
                _ => None,
            })
            .collect()
    };
    let exports = names(&r.worlds[w].exports);
    let imports = names(&r.worlds[w].imports);
    (full, exports, imports)
}

fn check<W: AdapterWorld>(dir: &str, world: &str, store_interface: &str) {
    let (full, exports, imports) = world_of(dir, world);
    assert_eq!(full, W::WORLD);
    for want in ["iii:adapter/lifecycle@0.1.0", store_interface] {
        assert!(
            exports.iter().any(|e| e == want),
            "{full} exports {exports:?}, not {want}"
        );
    }
    for want in ["iii:adapter/logging@0.1.0", "iii:adapter/config@0.1.0"] {
        assert!(
            imports.iter().any(|i| i == want),
            "{full} imports {imports:?}, not {want}"
        );
    }
}

#[test]
fn the_pubsub_world_shares_the_adapter_package_through_deps() {
    check::<PubSubWorld>("pubsub-0.1.0", "pubsub-adapter", "iii:pubsub/bus@0.1.0");
}

#[test]
fn the_queue_world_shares_the_adapter_package_through_deps() {
    check::<QueueWorld>(
        "queue-0.1.0",
        "queue-adapter",
        "iii:queue/queue-store@0.1.0",
    );
}

#[test]
fn the_queue_router_world_adds_the_topic_router_to_the_queue_world() {
    let (full, exports, _) = world_of("queue-0.1.0", "queue-router-adapter");
    assert_eq!(full, "iii:queue/queue-router-adapter@0.1.0");
    for want in [
        "iii:adapter/lifecycle@0.1.0",
        "iii:queue/queue-store@0.1.0",
        "iii:queue/topic-router@0.1.0",
    ] {
        assert!(
            exports.iter().any(|e| e == want),
            "{full} exports {exports:?}, not {want}"
        );
    }
}

#[test]
fn the_lock_world_shares_the_adapter_package_through_deps() {
    check::<LockWorld>("lock-0.1.0", "lock-adapter", "iii:lock/lock-store@0.1.0");
}

#[test]
fn the_state_and_stream_worlds_match_their_traits() {
    check::<StateWorld>(
        "adapter-0.1.0",
        "state-adapter",
        "iii:adapter/state-store@0.1.0",
    );
    check::<StreamWorld>(
        "adapter-0.1.0",
        "stream-adapter",
        "iii:adapter/stream-store@0.1.0",
    );
}

#[test]
fn the_policy_world_exports_decisions_and_imports_the_host_imports() {
    let (full, exports, imports) = world_of("policy-0.1.0", "policy");
    assert_eq!(full, PolicyWorld::WORLD);
    assert_eq!(exports, vec!["iii:policy/decisions@0.1.0".to_string()]);
    for want in ["iii:adapter/logging@0.1.0", "iii:adapter/config@0.1.0"] {
        assert!(
            imports.iter().any(|i| i == want),
            "{full} imports {imports:?}, not {want}"
        );
    }
}
