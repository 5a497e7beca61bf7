//! cgroups for namespace sandboxes: v1 controllers (memory, cpu, pids) when
//! they are mounted, else the v2 hierarchy with those controllers delegated.
//! Every sandbox gets `iii-sandbox/<id>` under each; nothing else is touched.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::RuntimeError;

/// The parent group under each hierarchy.
pub const PARENT: &str = "iii-sandbox";
/// v1 CFS period and the one written to v2 `cpu.max`.
const CPU_PERIOD_US: u64 = 100_000;

/// Which hierarchies hold the controllers, as read from `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// One mount per v1 controller (`cpu` may be co-mounted with `cpuacct`).
    V1 {
        /// The memory controller's mount.
        memory: PathBuf,
        /// The cpu controller's mount, when there is one (then no CPU quota).
        cpu: Option<PathBuf>,
        /// The pids controller's mount.
        pids: PathBuf,
    },
    /// The unified hierarchy.
    V2 {
        /// Its mount point.
        root: PathBuf,
    },
}

/// The limits one sandbox's group enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Memory (and memory + swap, so no swap), bytes.
    pub memory_bytes: u64,
    /// CPU quota in whole CPUs.
    pub cpus: u32,
    /// `pids.max`.
    pub pids_max: u32,
}

impl Layout {
    /// Reads the mounts of this process's mount namespace.
    pub fn detect() -> Result<Self, RuntimeError> {
        let info = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| RuntimeError::io("reading", Path::new("/proc/self/mountinfo"), e))?;
        Self::from_mountinfo(&info, |p| {
            std::fs::read_to_string(p.join("cgroup.controllers")).unwrap_or_default()
        })
    }

    /// The layout `mountinfo` describes; `controllers(root)` reads a v2
    /// root's `cgroup.controllers`.
    pub fn from_mountinfo(
        info: &str,
        controllers: impl Fn(&Path) -> String,
    ) -> Result<Self, RuntimeError> {
        let (mut memory, mut cpu, mut pids, mut v2) = (None, None, None, None);
        for line in info.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let Some(dash) = fields.iter().position(|f| *f == "-") else {
                continue;
            };
            let (Some(mnt), Some(fstype), Some(sopts)) =
                (fields.get(4), fields.get(dash + 1), fields.get(dash + 3))
            else {
                continue;
            };
            let mnt = PathBuf::from(*mnt);
            match *fstype {
                "cgroup" => {
                    for o in sopts.split(',') {
                        match o {
                            "memory" => memory = Some(mnt.clone()),
                            "cpu" => cpu = Some(mnt.clone()),
                            "pids" => pids = Some(mnt.clone()),
                            _ => {}
                        }
                    }
                }
                "cgroup2" if v2.is_none() => v2 = Some(mnt),
                _ => {}
            }
        }
        if let (Some(memory), Some(pids)) = (memory.clone(), pids.clone()) {
            return Ok(Self::V1 { memory, cpu, pids });
        }
        if let Some(root) = v2 {
            let have = controllers(&root);
            let missing: Vec<&str> = ["memory", "pids"]
                .into_iter()
                .filter(|c| !have.split_whitespace().any(|h| h == *c))
                .collect();
            if missing.is_empty() {
                return Ok(Self::V2 { root });
            }
            return Err(RuntimeError::Cgroup(format!(
                "the cgroup v2 hierarchy at {} lacks the {} controller(s) and no v1 memory + pids \
                 controllers are mounted; boot with them enabled (systemd: \
                 Delegate=memory pids cpu) or mount the v1 controllers",
                root.display(),
                missing.join(" ")
            )));
        }
        Err(RuntimeError::Cgroup(
            "no cgroup hierarchy with the memory and pids controllers is mounted (neither v1 nor v2); \
             mount cgroup2 on /sys/fs/cgroup"
                .into(),
        ))
    }

    /// The group directories a sandbox `id` has (or would have).
    pub fn dirs(&self, id: &str) -> Vec<PathBuf> {
        match self {
            Self::V1 { memory, cpu, pids } => {
                let mut v = vec![memory.join(PARENT).join(id)];
                if let Some(c) = cpu {
                    v.push(c.join(PARENT).join(id));
                }
                v.push(pids.join(PARENT).join(id));
                v
            }
            Self::V2 { root } => vec![root.join(PARENT).join(id)],
        }
    }

    /// Creates sandbox `id`'s groups with `limits` applied. On failure the
    /// groups made so far are removed again.
    pub fn create(&self, id: &str, limits: Limits) -> Result<Cgroups, RuntimeError> {
        let groups = Cgroups {
            dirs: self.dirs(id),
        };
        if let Some(d) = groups.dirs.iter().find(|d| d.exists()) {
            return Err(RuntimeError::Cgroup(format!(
                "{} already exists (a sandbox with id {id} is running or was left behind)",
                d.display()
            )));
        }
        let r = self.apply(id, &groups, limits);
        if r.is_err() {
            let _ = groups.remove(Duration::from_secs(2));
        }
        r.map(|()| groups)
    }

    fn apply(&self, id: &str, groups: &Cgroups, l: Limits) -> Result<(), RuntimeError> {
        let quota = u64::from(l.cpus.max(1)) * CPU_PERIOD_US;
        match self {
            Self::V1 { memory, cpu, pids } => {
                let m = memory.join(PARENT).join(id);
                mkdir(&m)?;
                write(
                    &m.join("memory.limit_in_bytes"),
                    &l.memory_bytes.to_string(),
                )?;
                // memsw exists only with swap accounting; without it there is
                // nothing to limit, and swappiness 0 keeps pages out of swap.
                let memsw = m.join("memory.memsw.limit_in_bytes");
                if memsw.exists() {
                    write(&memsw, &l.memory_bytes.to_string())?;
                }
                let _ = std::fs::write(m.join("memory.swappiness"), "0");
                if let Some(c) = cpu {
                    let c = c.join(PARENT).join(id);
                    mkdir(&c)?;
                    write(&c.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                    write(&c.join("cpu.cfs_quota_us"), &quota.to_string())?;
                }
                let p = pids.join(PARENT).join(id);
                mkdir(&p)?;
                write(&p.join("pids.max"), &l.pids_max.to_string())?;
            }
            Self::V2 { root } => {
                let parent = root.join(PARENT);
                mkdir(&parent)?;
                let have =
                    std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
                let wanted: Vec<String> = ["memory", "cpu", "pids"]
                    .into_iter()
                    .filter(|c| have.split_whitespace().any(|h| h == *c))
                    .map(|c| format!("+{c}"))
                    .collect();
                let wanted = wanted.join(" ");
                write(&root.join("cgroup.subtree_control"), &wanted)?;
                write(&parent.join("cgroup.subtree_control"), &wanted)?;
                let g = &groups.dirs[0];
                mkdir(g)?;
                write(&g.join("memory.max"), &l.memory_bytes.to_string())?;
                let swap = g.join("memory.swap.max");
                if swap.exists() {
                    write(&swap, "0")?;
                }
                if g.join("cpu.max").exists() {
                    write(&g.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?;
                }
                write(&g.join("pids.max"), &l.pids_max.to_string())?;
            }
        }
        Ok(())
    }
}

/// One sandbox's groups.
#[derive(Debug, Clone)]
pub struct Cgroups {
    dirs: Vec<PathBuf>,
}

impl Cgroups {
    /// The groups of sandbox `id` under `layout`, whether or not they exist.
    pub fn of(layout: &Layout, id: &str) -> Self {
        Self {
            dirs: layout.dirs(id),
        }
    }

    /// The group directories.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Their `cgroup.procs` files (the init writes its pid into each).
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// Every pid in any of the groups.
    pub fn pids(&self) -> Vec<i32> {
        let mut v: Vec<i32> = self
            .dirs
            .iter()
            .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
            .flat_map(|s| {
                s.lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect::<Vec<i32>>()
            })
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// A group's current task count (`pids.current`), when it has one.
    pub fn pids_current(&self) -> Option<u64> {
        self.dirs
            .iter()
            .find_map(|d| std::fs::read_to_string(d.join("pids.current")).ok())
            .and_then(|s| s.trim().parse().ok())
    }

    /// SIGKILLs whatever is left in the groups and removes them, retrying
    /// while the kernel still lists exiting tasks, for at most `timeout`.
    pub fn remove(&self, timeout: Duration) -> Result<(), RuntimeError> {
        let deadline = Instant::now() + timeout;
        loop {
            for pid in self.pids() {
                // SAFETY: kill(2) has no memory effects; the pid was read from
                // this sandbox's own cgroup, so it is one of its tasks.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            let mut left = Vec::new();
            for d in &self.dirs {
                match std::fs::remove_dir(d) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => left.push(format!("{} ({e})", d.display())),
                }
            }
            if left.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(RuntimeError::Cgroup(format!(
                    "cannot remove {} (tasks still inside after {} s)",
                    left.join(", "),
                    timeout.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn mkdir(p: &Path) -> Result<(), RuntimeError> {
    std::fs::create_dir_all(p).map_err(|e| RuntimeError::io("creating cgroup", p, e))
}

fn write(p: &Path, v: &str) -> Result<(), RuntimeError> {
    std::fs::write(p, v).map_err(|e| RuntimeError::io("writing", p, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1_HOST: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn v1_controllers_win_over_an_empty_v2_hierarchy() {
        let l = Layout::from_mountinfo(V1_HOST, |_| String::new()).unwrap();
        assert_eq!(
            l,
            Layout::V1 {
                memory: "/sys/fs/cgroup/memory".into(),
                cpu: Some("/sys/fs/cgroup/cpu".into()),
                pids: "/sys/fs/cgroup/pids".into(),
            }
        );
        assert_eq!(l.dirs("x").len(), 3);
    }

    #[test]
    fn co_mounted_cpu_and_pure_v2_are_understood() {
        let comounted = "1 0 0:1 / /c/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n\
                         2 0 0:2 / /c/memory rw - cgroup cgroup rw,memory\n\
                         3 0 0:3 / /c/pids rw - cgroup cgroup rw,pids\n";
        match Layout::from_mountinfo(comounted, |_| String::new()).unwrap() {
            Layout::V1 { cpu, .. } => assert_eq!(cpu, Some("/c/cpu,cpuacct".into())),
            l => panic!("{l:?}"),
        }
        let v2 = "1 0 0:1 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let l = Layout::from_mountinfo(v2, |_| "cpuset cpu io memory pids".into()).unwrap();
        assert_eq!(
            l,
            Layout::V2 {
                root: "/sys/fs/cgroup".into()
            }
        );
        let e = Layout::from_mountinfo(v2, |_| "cpu io".into()).unwrap_err();
        assert!(e.to_string().contains("memory pids"), "{e}");
        let e = Layout::from_mountinfo("", |_| String::new()).unwrap_err();
        assert!(e.to_string().contains("mount cgroup2"), "{e}");
    }

    #[test]
    fn limits_are_written_and_groups_removed() {
        if !nix_root() {
            return;
        }
        let Ok(layout) = Layout::detect() else { return };
        let id = format!("unit-{}", std::process::id());
        let g = layout
            .create(
                &id,
                Limits {
                    memory_bytes: 64 << 20,
                    cpus: 2,
                    pids_max: 17,
                },
            )
            .unwrap();
        let pids = g
            .dirs()
            .iter()
            .find_map(|d| std::fs::read_to_string(d.join("pids.max")).ok())
            .unwrap();
        assert_eq!(pids.trim(), "17");
        assert!(layout
            .create(
                &id,
                Limits {
                    memory_bytes: 1 << 26,
                    cpus: 1,
                    pids_max: 1
                }
            )
            .is_err());
        g.remove(Duration::from_secs(2)).unwrap();
        assert!(g.dirs().iter().all(|d| !d.exists()));
    }

    fn nix_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }
}
