//! VM test harness library: qemu launching, test fixtures (OCI image, root
//! images, initramfs), the qemu-TCG guest-side suite and the nested suite.

pub mod fixtures;
pub mod nested;
pub mod qemu;
pub mod tcg;

pub struct Report {
    pub passed: usize,
    pub failed: usize,
}

impl Default for Report {
    fn default() -> Self {
        Self::new()
    }
}

impl Report {
    pub fn new() -> Self {
        Self {
            passed: 0,
            failed: 0,
        }
    }

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
