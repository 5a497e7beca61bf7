//! VM test harness library: qemu launching, test fixtures (OCI image, root
//! images, initramfs), the qemu-TCG guest-side suite and the nested suite.

#![deny(clippy::cast_possible_truncation)]

pub mod fixtures;
pub mod nested;
pub mod qemu;
pub mod tcg;

/// Scenario results: one `PASS`/`FAIL` line each, and the totals.
pub struct Report {
    /// Scenarios that passed.
    pub passed: usize,
    /// Scenarios that failed.
    pub failed: usize,
}

impl Default for Report {
    fn default() -> Self {
        Self::new()
    }
}

impl Report {
    /// A report with nothing run yet.
    pub fn new() -> Self {
        Self {
            passed: 0,
            failed: 0,
        }
    }

    /// Records scenario `name`: `Ok(note)` prints `PASS name (note)`, an error `FAIL name: error`.
    pub fn check(&mut self, name: &str, r: anyhow::Result<String>) {
        match r {
            Ok(note) => {
                self.passed += 1;
                println!(
                    "PASS {name}{}",
                    if note.is_empty() {
                        String::new()
                    } else {
                        format!(" ({note})")
                    }
                );
            }
            Err(e) => {
                self.failed += 1;
                println!("FAIL {name}: {e:#}");
            }
        }
    }
}
