//! Hostile and misbuilt plugins are contained and reported; the host keeps
//! serving everything else.

use crate::fixtures;
use crate::{host, tempdir};

use std::time::{Duration, Instant};

use iii_plugin_host::{
    AdapterErrorKind, AdapterSpec, AdapterWorld, Contained, Grants, PluginError, StateStore,
    StateWorld, StreamWorld,
};
use serde_json::{json, Map, Value};

fn hostile(mode: &str, grants: Grants) -> AdapterSpec {
    let mut cfg = Map::new();
    cfg.insert("mode".into(), json!(mode));
    AdapterSpec::path(&fixtures::components().hostile)
        .with_config(cfg)
        .with_grants(grants)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infinite_loop_hits_the_deadline_while_others_are_served() {
    let host = host();
    let looping = host
        .load_adapter::<StateWorld>(&hostile(
            "loop",
            Grants {
                deadline_ms: Some(1_500),
                ..Grants::default()
            },
        ))
        .await
        .unwrap();
    let kv = host
        .load_adapter::<StateWorld>(&AdapterSpec::named("kv"))
        .await
        .unwrap();
    let started = Instant::now();
    let spinner = tokio::spawn(async move { looping.get("s", "k").await });
    // While the plugin spins, another adapter answers promptly.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let t = Instant::now();
    kv.set("s", "k", &json!(1)).await.unwrap();
    assert_eq!(kv.get("s", "k").await.unwrap(), Some(json!(1)));
    assert!(
        t.elapsed() < Duration::from_millis(750),
        "kv blocked for {:?}",
        t.elapsed()
    );
    let err = spinner.await.unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            PluginError::Contained {
                cause: Contained::DeadlineExceeded {
                    deadline_ms: 1_500,
                    ..
                },
                ..
            }
        ),
        "{err}"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1_500) && took < Duration::from_secs(10),
        "{took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_spinning_plugin_does_not_starve_a_single_threaded_executor() {
    let host = host();
    let looping = host
        .load_adapter::<StateWorld>(&hostile(
            "loop",
            Grants {
                deadline_ms: Some(3_000),
                ..Grants::default()
            },
        ))
        .await
        .unwrap();
    let spinner = tokio::spawn(async move { looping.get("s", "k").await });
    let t = Instant::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    // The sleeping task got the thread back long before the deadline
    // (without yielding it would wait the full 3 s).
    assert!(
        t.elapsed() < Duration::from_millis(1_500),
        "{:?}",
        t.elapsed()
    );
    let err = spinner.await.unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            PluginError::Contained {
                cause: Contained::DeadlineExceeded { .. },
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_bomb_hits_the_cap() {
    let host = host();
    let bomb = host
        .load_adapter::<StateWorld>(&hostile(
            "membomb",
            Grants {
                memory_mb: Some(16),
                ..Grants::default()
            },
        ))
        .await
        .unwrap();
    let err = bomb.set("s", "k", &json!(1)).await.unwrap_err();
    assert!(
        matches!(
            err,
            PluginError::Contained {
                cause: Contained::MemoryLimit { limit_mb: 16, .. },
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("memory cap of 16 MiB"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthorized_connect_is_denied_and_granted_connect_works() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap().to_string();
    let accept = tokio::spawn(async move {
        let mut n = 0;
        while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(3), listener.accept()).await
        {
            n += 1;
        }
        n
    });
    let host = host();
    let mut spec = hostile("connect", Grants::default());
    spec.config.insert("target".into(), json!(target));
    let denied = host.load_adapter::<StateWorld>(&spec).await.unwrap();
    let err = denied.get("s", "k").await.unwrap_err();
    match &err {
        PluginError::Contained {
            cause: Contained::CapabilityDenied { capability, .. },
            ..
        } => {
            assert!(
                capability.contains(&target) && capability.contains("tcp connect"),
                "{capability}"
            )
        }
        other => panic!("expected CapabilityDenied, got {other}"),
    }
    // A grant for a different port does not help.
    let mut other_port = spec.clone();
    other_port.grants.network = vec!["127.0.0.1:1".into()];
    let err = host
        .load_adapter::<StateWorld>(&other_port)
        .await
        .unwrap()
        .get("s", "k")
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            PluginError::Contained {
                cause: Contained::CapabilityDenied { .. },
                ..
            }
        ),
        "{err}"
    );
    // Granting the address (by name: localhost resolves to it) lets it through.
    let port = target.rsplit(':').next().unwrap();
    let mut granted = spec.clone();
    granted.grants.network = vec![format!("localhost:{port}")];
    let ok = host.load_adapter::<StateWorld>(&granted).await.unwrap();
    assert_eq!(ok.get("s", "k").await.unwrap(), None::<Value>);
    assert_eq!(
        accept.await.unwrap(),
        1,
        "exactly the granted connect reached the listener"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_trapping_plugin_is_restarted_then_given_up() {
    let host = host();
    let trapper = host
        .load_adapter::<StateWorld>(&hostile("trap", Grants::default()))
        .await
        .unwrap();
    let mut traps = 0;
    let mut gave_up = None;
    for _ in 0..10 {
        match trapper.get("s", "k").await {
            Err(PluginError::Contained {
                cause: Contained::Trap { message, .. },
                ..
            }) => {
                assert!(
                    message.contains("unreachable") || message.contains("trap"),
                    "{message}"
                );
                traps += 1;
            }
            Err(e @ PluginError::GaveUp { .. }) => {
                gave_up = Some(e);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // max_restarts = 3 in the test host: 4 failing calls, the 4th gives up.
    assert_eq!(traps, 4);
    assert_eq!(trapper.restarts().await, 3);
    let e = gave_up.expect("supervisor gave up");
    assert!(
        e.to_string().contains("given up") && e.to_string().contains("trapped"),
        "{e}"
    );
    // Stays given up, and the rest of the host is fine.
    assert!(matches!(
        trapper.list_groups().await,
        Err(PluginError::GaveUp { .. })
    ));
    let kv = host
        .load_adapter::<StateWorld>(&AdapterSpec::named("kv"))
        .await
        .unwrap();
    kv.set("a", "b", &json!(1)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_failure_restarts_the_instance_and_it_serves_again() {
    // `mode` is read on every call, so a deadline-trapped instance is
    // replaced and the fresh one answers (here it loops again).
    let host = host();
    let a = host
        .load_adapter::<StateWorld>(&hostile(
            "loop",
            Grants {
                deadline_ms: Some(50),
                ..Grants::default()
            },
        ))
        .await
        .unwrap();
    for _ in 0..2 {
        let e = a.get("s", "k").await.unwrap_err();
        assert!(
            matches!(
                e,
                PluginError::Contained {
                    cause: Contained::DeadlineExceeded { .. },
                    ..
                }
            ),
            "{e}"
        );
    }
    assert_eq!(a.restarts().await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_world_names_the_missing_export() {
    let host = host();
    let spec = AdapterSpec::path(&fixtures::components().wrong_world);
    let err = host
        .load_adapter::<StateWorld>(&spec)
        .await
        .err()
        .expect("must not load as state");
    match &err {
        PluginError::MissingExport { export, world, .. } => {
            assert_eq!(export, "iii:adapter/state-store@0.1.0");
            assert_eq!(world, "iii:adapter/state-adapter@0.1.0");
        }
        other => panic!("expected MissingExport, got {other}"),
    }
    assert!(err
        .to_string()
        .contains("missing export `iii:adapter/state-store@0.1.0`"));
    // It is a fine stream adapter, though.
    let s = host.load_adapter::<StreamWorld>(&spec).await.unwrap();
    assert_eq!(s.list_all().await.unwrap(), vec![]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuel_grant_bounds_a_call_deterministically() {
    let spec = hostile(
        "loop",
        Grants {
            fuel: Some(5_000_000),
            deadline_ms: Some(60_000),
            ..Grants::default()
        },
    );
    // The shared test host runs without fuel metering: the grant is refused.
    let err = host()
        .load_adapter::<StateWorld>(&spec)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, PluginError::InvalidSpec(_)), "{err}");
    let metered = iii_plugin_host::PluginHost::new(iii_plugin_host::HostConfig {
        fuel: true,
        max_instances: 8,
        ..Default::default()
    })
    .unwrap();
    let a = metered.load_adapter::<StateWorld>(&spec).await.unwrap();
    let t = Instant::now();
    let err = a.get("s", "k").await.unwrap_err();
    assert!(
        matches!(
            err,
            PluginError::Contained {
                cause: Contained::FuelExhausted {
                    fuel: 5_000_000,
                    ..
                },
                ..
            }
        ),
        "{err}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "stopped by fuel, not the deadline"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_call_leaves_a_usable_adapter() {
    let host = host();
    let mut spec = hostile(
        "slow",
        Grants {
            deadline_ms: Some(5_000),
            ..Grants::default()
        },
    );
    spec.config.insert("spin_ms".into(), json!("300"));
    let a = host.load_adapter::<StateWorld>(&spec).await.unwrap();
    let b = a.clone();
    let call = tokio::spawn(async move { b.get("s", "k").await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The caller goes away while the plugin is mid-call.
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());
    assert_eq!(a.get("s", "k").await.unwrap(), None);
    assert_eq!(a.restarts().await, 0, "cancellation is not a failure");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_environment_and_no_files_beyond_the_data_dir() {
    std::env::set_var("III_SECRET_FOR_PROBE", "hunter2");
    let host = host();
    let ungranted = host
        .load_adapter::<StateWorld>(&hostile("probe", Grants::default()))
        .await
        .unwrap();
    assert_eq!(ungranted.get("s", "k").await.unwrap(), None);
    let dir = tempdir();
    let granted = host
        .load_adapter::<StateWorld>(&hostile(
            "probe",
            Grants {
                data_dir: Some(dir.path().join("inner")),
                ..Grants::default()
            },
        ))
        .await
        .unwrap();
    assert_eq!(granted.get("s", "k").await.unwrap(), None);
    assert!(!dir.path().join("escape").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_see_the_failure_kind_and_the_knob_through_the_loader() {
    let host = host();
    let bomb = iii_plugin_host::load::<StateWorld>(
        &host,
        &hostile(
            "membomb",
            Grants {
                memory_mb: Some(16),
                ..Grants::default()
            },
        ),
    )
    .await
    .unwrap();
    let err = bomb.set("s", "k", &json!(1)).await.unwrap_err();
    assert_eq!(err.kind, AdapterErrorKind::Unavailable, "{err}");
    assert!(
        err.message.contains("memory cap of 16 MiB") && err.message.contains("grants.memory_mb"),
        "{err}"
    );
    // The instance was replaced: the next call fails the same way, not with a stale state.
    let again = bomb.get("s", "k").await.unwrap_err();
    assert_eq!(again.kind, AdapterErrorKind::Unavailable, "{again}");

    // A load failure keeps the host's message, which names the export.
    let err = iii_plugin_host::load::<StateWorld>(
        &host,
        &AdapterSpec::path(&fixtures::components().wrong_world),
    )
    .await
    .err()
    .expect("wrong world must not load as state");
    assert_eq!(err.kind, AdapterErrorKind::Other);
    assert!(
        err.message
            .contains("missing export `iii:adapter/state-store@0.1.0`"),
        "{err}"
    );
}

/// A world this host has no module for.
struct CacheWorld;
impl AdapterWorld for CacheWorld {
    const WORLD: &'static str = "iii:cache/cache-adapter@0.1.0";
    type Store = dyn StateStore;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_world_without_a_module_is_named_with_the_ones_there_are() {
    let err = iii_plugin_host::load::<CacheWorld>(&host(), &AdapterSpec::named("kv"))
        .await
        .err()
        .expect("no cache world");
    assert!(
        err.message.contains("`iii:cache/cache-adapter@0.1.0`")
            && err.message.contains("`iii:lock/lock-adapter@0.1.0`")
            && err.message.contains("`iii:adapter/state-adapter@0.1.0`")
            && err.message.contains("`iii:adapter/stream-adapter@0.1.0`")
            && err.message.contains("`iii:queue/queue-adapter@0.1.0`"),
        "{err}"
    );
}
