//! Boot configuration from the kernel command line (`iii.*` words).

use iii_vm_agent_proto::ExecRequest;

#[derive(Debug, thiserror::Error)]
pub enum CmdlineError {
    #[error("iii.run is not valid hex")]
    Hex,
    #[error("iii.run is not a valid exec request: {0}")]
    Json(String),
    #[error("bad port {0:?} in iii.fwd")]
    Port(String),
}

#[derive(Debug, Default, PartialEq)]
pub struct BootConfig {
    /// Block device holding the read-only lower layer (`iii.root`).
    pub root: Option<String>,
    /// Its filesystem type (`iii.rootfstype`, default erofs).
    pub root_fstype: String,
    /// Writable upper layer: a block device with ext4, or none for tmpfs (`iii.upper`).
    pub upper: Option<String>,
    /// Guest 127.0.0.1 ports forwarded to the host over vsock (`iii.fwd=a,b`).
    pub forward_ports: Vec<u16>,
    /// The workload (`iii.run=<hex JSON ExecRequest>`); without it the VM
    /// serves exec requests until told to power off.
    pub run: Option<ExecRequest>,
}

pub fn parse(cmdline: &str) -> Result<BootConfig, CmdlineError> {
    let mut cfg = BootConfig {
        root_fstype: "erofs".into(),
        ..Default::default()
    };
    for word in cmdline.split_ascii_whitespace() {
        let Some((k, v)) = word.split_once('=') else {
            continue;
        };
        match k {
            "iii.root" => cfg.root = Some(v.into()),
            "iii.rootfstype" => cfg.root_fstype = v.into(),
            "iii.upper" if v != "tmpfs" => cfg.upper = Some(v.into()),
            "iii.fwd" => {
                for p in v.split(',').filter(|p| !p.is_empty()) {
                    cfg.forward_ports
                        .push(p.parse().map_err(|_| CmdlineError::Port(p.into()))?);
                }
            }
            "iii.run" => {
                let bytes = from_hex(v).ok_or(CmdlineError::Hex)?;
                cfg.run = Some(serde_json_from(&bytes).map_err(CmdlineError::Json)?);
            }
            _ => {}
        }
    }
    Ok(cfg)
}

fn serde_json_from(b: &[u8]) -> Result<ExecRequest, String> {
    let f = iii_vm_agent_proto::Frame::new(iii_vm_agent_proto::Kind::Exec, b.to_vec());
    f.json().map_err(|e| e.to_string())
}

pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_iii_words_and_ignores_the_rest() {
        let json = br#"{"argv":["/bin/sh","-c","exit 3"],"cwd":"/tmp"}"#;
        let hex: String = json.iter().map(|b| format!("{b:02x}")).collect();
        let c = parse(&format!(
            "console=ttyS0 quiet iii.root=/dev/vda iii.rootfstype=ext4 iii.upper=/dev/vdb iii.fwd=49134,80 iii.run={hex}"
        ))
        .unwrap();
        assert_eq!(c.root.as_deref(), Some("/dev/vda"));
        assert_eq!(c.root_fstype, "ext4");
        assert_eq!(c.upper.as_deref(), Some("/dev/vdb"));
        assert_eq!(c.forward_ports, vec![49134, 80]);
        let run = c.run.unwrap();
        assert_eq!(run.argv, vec!["/bin/sh", "-c", "exit 3"]);
        assert_eq!(run.cwd.as_deref(), Some("/tmp"));
    }

    #[test]
    fn defaults_and_errors() {
        let c = parse("quiet iii.upper=tmpfs").unwrap();
        assert_eq!(c.root_fstype, "erofs");
        assert_eq!(c.upper, None);
        assert!(c.run.is_none());
        assert!(matches!(parse("iii.fwd=x"), Err(CmdlineError::Port(_))));
        assert!(matches!(parse("iii.run=abc"), Err(CmdlineError::Hex)));
        assert!(matches!(parse("iii.run=7b7d"), Err(CmdlineError::Json(_))));
    }
}
