//! Where the policies written in Python and JavaScript are: `plugins/policies/build-lang.sh`
//! builds them (componentize-py, componentize-js) into a content-keyed cache and copies them
//! to `$III_LANG_POLICIES` (tests/plugins.sh sets it and builds first). Without the variable
//! the first caller runs the script itself, into this binary's target tmp dir; a warm cache
//! makes that a copy. The black-box tests include this file too (`#[path]`).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The directory holding `python-allowlist.wasm` and `js-tenant.wasm`.
pub fn lang_policies_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("III_LANG_POLICIES") {
            return PathBuf::from(dir);
        }
        // Shared by the plugin-host and the black-box tests (`#[path]`), so the script is
        // found from whichever crate includes this file.
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .ancestors()
            .map(|d| d.join("plugins/policies/build-lang.sh"))
            .find(|s| s.exists())
            .expect("plugins/policies/build-lang.sh above the crate");
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("lang-policies");
        let status = std::process::Command::new("bash")
            .arg(&script)
            .env("III_LANG_POLICIES", &dir)
            .stdin(std::process::Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
        assert!(
            status.success(),
            "{} failed ({status}); it needs python3 (with venv) and npm",
            script.display()
        );
        dir
    })
}

/// The built component `<name>.wasm` (`python-allowlist`, `js-tenant`).
pub fn lang_policy(name: &str) -> PathBuf {
    let p = lang_policies_dir().join(format!("{name}.wasm"));
    assert!(p.exists(), "{} was not built", p.display());
    p
}
