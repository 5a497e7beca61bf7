//! The microVM runtime on this host. Its success path needs a real KVM (the
//! nested VM suite runs it: `iii-sandbox-probe` inside L1); here the refusals
//! and the undoing of a VM that never answers are checked.

use std::path::{Path, PathBuf};
use std::time::Duration;

use iii_sandbox_runtime::microvm::MicroVmRuntime;
use iii_sandbox_runtime::{
    LowerFormat, Rootfs, Runtime, RuntimeError, RuntimeOptions, SandboxSpec,
};

fn spec(id: &str, lower: &Path) -> SandboxSpec {
    SandboxSpec {
        id: format!("{id}-{}", std::process::id()),
        rootfs: Rootfs {
            lower: lower.to_path_buf(),
            format: LowerFormat::Erofs,
            env: vec![],
            key: "t".into(),
        },
        cpus: 1,
        memory_mb: 128,
        pids_max: 0,
        network: false,
        env: vec![],
        engine_port: 49134,
        mounts: Vec::new(),
    }
}

/// The static VMM that tests/vmm.sh builds, when it is there.
fn vmm() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::env::var_os("III_VMM")
        .map(PathBuf::from)
        .into_iter()
        .chain([
            root.join("target/x86_64-unknown-linux-musl/release/iii-vmm"),
            root.join("target/debug/iii-vmm"),
        ])
        .find(|p| p.is_file())
}

fn pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

#[test]
fn a_pvm_host_is_refused_naming_the_namespace_runtime() {
    if !pvm() {
        return;
    }
    let e = MicroVmRuntime::new(RuntimeOptions::default())
        .err()
        .expect("PVM must be refused");
    assert!(matches!(e, RuntimeError::Host(_)), "{e}");
    assert!(e.to_string().contains("namespace"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_is_refused_and_a_vm_that_never_answers_is_undone() {
    // On PVM the guest cannot boot: with --allow-pvm the VMM runs, the agent
    // never answers, and create must fail and leave nothing behind.
    let Some(vmm) = vmm() else {
        eprintln!("no iii-vmm built (tests/vmm.sh builds it); skipped");
        return;
    };
    if !pvm() {
        eprintln!("not a PVM host: the nested suite covers the microVM runtime here; skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let lower = dir.path().join("lower.erofs");
    std::fs::write(&lower, vec![0u8; 1 << 20]).unwrap();
    let init = dir.path().join("iii-init");
    std::fs::write(&init, b"not really init").unwrap();
    let rt = match MicroVmRuntime::new(RuntimeOptions {
        state_root: Some(dir.path().join("state")),
        vmm: Some(vmm),
        init: Some(init),
        ready_timeout: Duration::from_secs(3),
        upper_mib: 16,
        allow_pvm: true,
        ..Default::default()
    }) {
        Ok(rt) => rt,
        Err(RuntimeError::Host(m)) if m.contains("kernel") => {
            eprintln!("no guest kernel built ({m}); skipped");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let mut net = spec("net", &lower);
    net.network = true;
    let e = rt.create(net).await.err().expect("network must be refused");
    assert!(e.to_string().contains("no network device"), "{e}");

    let sp = spec("never", &lower);
    let sdir = dir.path().join("state").join(&sp.id);
    let e = rt
        .create(sp)
        .await
        .err()
        .expect("the guest cannot boot here");
    assert!(
        matches!(
            e,
            RuntimeError::ReadyTimeout { .. } | RuntimeError::DiedStarting { .. }
        ),
        "{e}"
    );
    assert!(!sdir.exists(), "{} left behind", sdir.display());
    // No VMM process for that sandbox is left.
    let needle = sdir.display().to_string();
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(c) = std::fs::read(p.path().join("cmdline")) {
            let c = String::from_utf8_lossy(&c);
            if c.contains(&needle) {
                let st = std::fs::read_to_string(p.path().join("stat")).unwrap_or_default();
                assert!(
                    st.contains(") Z"),
                    "VMM still runs: {c} ({})",
                    p.path().display()
                );
            }
        }
    }
}
