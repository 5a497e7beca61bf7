//! Thin wrappers over the system calls init needs.

use std::ffi::CString;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

#[derive(Debug, thiserror::Error)]
pub enum SysError {
    #[error("{what} {target}: {source}")]
    Call {
        what: &'static str,
        target: String,
        source: io::Error,
    },
}

fn cstr(s: &str) -> CString {
    // Paths come from our own code and the command line, which cannot hold NUL.
    CString::new(s).expect("no NUL in path")
}

fn check(ret: libc::c_int, what: &'static str, target: &str) -> Result<(), SysError> {
    if ret < 0 {
        Err(SysError::Call {
            what,
            target: target.into(),
            source: io::Error::last_os_error(),
        })
    } else {
        Ok(())
    }
}

pub fn mount(
    src: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), SysError> {
    let (s, t, f) = (cstr(src), cstr(target), cstr(fstype));
    let d = data.map(cstr);
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call.
    let ret = unsafe {
        libc::mount(
            s.as_ptr(),
            t.as_ptr(),
            f.as_ptr(),
            flags,
            d.as_ref().map_or(std::ptr::null(), |d| d.as_ptr().cast()),
        )
    };
    check(ret, "mount", &format!("{src} on {target} ({fstype})"))
}

pub fn move_mount(src: &str, target: &str) -> Result<(), SysError> {
    let (s, t) = (cstr(src), cstr(target));
    // SAFETY: valid strings; MS_MOVE ignores fstype and data.
    let ret = unsafe {
        libc::mount(
            s.as_ptr(),
            t.as_ptr(),
            std::ptr::null(),
            libc::MS_MOVE,
            std::ptr::null(),
        )
    };
    check(ret, "move mount", &format!("{src} to {target}"))
}

pub fn chroot(path: &str) -> Result<(), SysError> {
    let p = cstr(path);
    // SAFETY: valid string.
    check(unsafe { libc::chroot(p.as_ptr()) }, "chroot", path)
}

pub fn umount_detach(target: &str) -> Result<(), SysError> {
    let t = cstr(target);
    // SAFETY: valid string.
    let ret = unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH) };
    check(ret, "umount", target)
}

/// `pivot_root(".", ".")` in the new root (cwd), then detaches the old root
/// stacked on top of it: no directory for the old root is needed.
pub fn pivot_into_cwd() -> Result<(), SysError> {
    let dot = cstr(".");
    // SAFETY: valid strings; pivot_root has no libc wrapper.
    let ret = unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) };
    check(if ret < 0 { -1 } else { 0 }, "pivot_root", ".")?;
    umount_detach(".")
}

pub fn sethostname(name: &str) -> Result<(), SysError> {
    // SAFETY: the pointer and length describe `name`'s bytes.
    let ret = unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) };
    check(ret, "sethostname", name)
}

/// A character device node `path` (mode 0666) for `major:minor`.
pub fn mknod_char(path: &str, major: u32, minor: u32) -> Result<(), SysError> {
    let p = cstr(path);
    // SAFETY: valid string; makedev is pure arithmetic.
    let ret = unsafe {
        libc::mknod(
            p.as_ptr(),
            libc::S_IFCHR | 0o666,
            libc::makedev(major, minor),
        )
    };
    check(ret, "mknod", path)?;
    // mknod applies the umask; the nodes must be usable by every user.
    // SAFETY: valid string.
    let ret = unsafe { libc::chmod(p.as_ptr(), 0o666) };
    check(ret, "chmod", path)
}

pub fn unshare(flags: libc::c_int) -> Result<(), SysError> {
    // SAFETY: plain syscall.
    check(unsafe { libc::unshare(flags) }, "unshare", "namespaces")
}

pub fn kill(pid: i32, sig: i32) {
    // SAFETY: plain syscall; failure (process gone) is fine.
    unsafe { libc::kill(pid, sig) };
}

/// Syncs and restarts the VM. With no ACPI the VMM treats a reboot (keyboard
/// controller reset, `reboot=k`, or a triple fault, `reboot=t`) as power off.
pub fn power_off() -> ! {
    // SAFETY: sync and reboot have no memory-safety preconditions.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_AUTOBOOT);
    }
    // reboot only returns on error (not PID 1 or no CAP_SYS_BOOT).
    std::process::exit(1)
}

pub fn loopback_up() -> Result<(), SysError> {
    // SAFETY: a plain socket call.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    check(fd, "socket", "AF_INET")?;
    // SAFETY: fd was just returned by socket() and is owned by nobody else.
    let _guard = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; zero is a valid initial value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *s as libc::c_char;
    }
    // SAFETY: ifr is a valid ifreq for the duration of the ioctl.
    let ret = unsafe { libc::ioctl(fd, crate::abi::SIOCGIFFLAGS, &mut ifr) };
    check(ret, "SIOCGIFFLAGS", "lo")?;
    // SAFETY: reading and writing the flags member of the union we just filled.
    unsafe { ifr.ifr_ifru.ifru_flags |= crate::abi::IFF_UP };
    // SAFETY: ifr is a valid ifreq for the duration of the ioctl.
    let ret = unsafe { libc::ioctl(fd, crate::abi::SIOCSIFFLAGS, &ifr) };
    check(ret, "SIOCSIFFLAGS", "lo")
}

/// Maps a wait status to a shell-style exit code.
pub fn exit_code(status: libc::c_int) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        255
    }
}

pub fn set_winsize(fd: RawFd, rows: u16, cols: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: ws is valid for the call; a failure just leaves the old size.
    unsafe { libc::ioctl(fd, libc::TIOCSWINSZ as _, &ws) };
}

/// Opens a pseudo-terminal pair: (master, slave).
pub fn openpty() -> io::Result<(OwnedFd, OwnedFd)> {
    let (mut m, mut s) = (0, 0);
    // SAFETY: out-pointers are valid; name/termios/winsize may be null.
    let ret = unsafe {
        libc::openpty(
            &mut m,
            &mut s,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openpty returned two fresh descriptors we now own.
    Ok(unsafe { (OwnedFd::from_raw_fd(m), OwnedFd::from_raw_fd(s)) })
}
