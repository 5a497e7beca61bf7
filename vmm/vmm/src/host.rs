//! Can this host run microVMs? Clear, actionable answers before any work.

use std::path::{Path, PathBuf};

/// Why this host cannot run a microVM, each with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The KVM device node does not exist.
    #[error("{0} does not exist: enable hardware virtualization (VT-x/AMD-V) in firmware and load kvm_intel or kvm_amd, or use the `namespace` sandbox runtime")]
    NoKvm(PathBuf),
    /// The KVM device exists but this user cannot open it.
    #[error("no permission to open {0}: add this user to the `kvm` group (usermod -aG kvm $USER) and log in again")]
    NoPermission(PathBuf),
    /// Opening the KVM device failed for another reason.
    #[error("{0}: {1}")]
    Open(PathBuf, std::io::Error),
    /// KVM is the PVM flavour, which stock guest kernels cannot use.
    #[error("/dev/kvm here is PVM (kvm_pvm loaded, no VT-x/AMD-V): it can only run PVM-patched guest kernels, and none is available; a stock guest kernel would crawl and then fail with emulation errors. Use the `namespace` sandbox runtime on this host")]
    Pvm,
    /// The guest kernel file is missing.
    #[error("guest kernel {0} not found: build it with `vmm/kernel/build.sh` (prints the cache directory holding vmlinux)")]
    KernelMissing(PathBuf),
}

/// True when the host KVM is PVM (the `kvm_pvm` module).
pub fn is_pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

/// Checks that `dev` can be opened read-write and, unless `allow_pvm`, is not PVM.
pub fn check_kvm(dev: &Path, allow_pvm: bool) -> Result<(), HostError> {
    match std::fs::OpenOptions::new().read(true).write(true).open(dev) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(HostError::NoKvm(dev.into()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(HostError::NoPermission(dev.into()))
        }
        Err(e) => return Err(HostError::Open(dev.into(), e)),
    }
    if is_pvm() && !allow_pvm {
        return Err(HostError::Pvm);
    }
    Ok(())
}

/// Checks that the guest kernel at `path` exists.
pub fn check_kernel(path: &Path) -> Result<(), HostError> {
    if path.is_file() {
        Ok(())
    } else {
        Err(HostError::KernelMissing(path.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_device_and_kernel_say_what_to_do() {
        let e = check_kvm(Path::new("/nonexistent/kvm"), false).unwrap_err();
        assert!(matches!(e, HostError::NoKvm(_)));
        assert!(e.to_string().contains("namespace"));
        let e = check_kernel(Path::new("/nonexistent/vmlinux")).unwrap_err();
        assert!(e.to_string().contains("vmm/kernel/build.sh"));
    }

    #[test]
    fn pvm_is_refused_unless_allowed() {
        if !Path::new("/dev/kvm").exists() {
            return;
        }
        let r = check_kvm(Path::new("/dev/kvm"), false);
        assert_eq!(r.is_err(), is_pvm(), "{r:?}");
        if is_pvm() {
            assert!(matches!(r, Err(HostError::Pvm)));
            assert!(check_kvm(Path::new("/dev/kvm"), true).is_ok());
        }
    }
}
