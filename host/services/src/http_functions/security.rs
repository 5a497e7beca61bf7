//! The `security` policy of HTTP-invoked functions: which URLs a worker may make the engine
//! call. A URL must be https (unless `require_https: false`), its host must match a glob of
//! `url_allowlist`, and with `block_private_ips` no address it names or resolves to may be
//! loopback, private, link-local, unique-local, unspecified, CGNAT, multicast, documentation
//! or otherwise non-global, IPv4 inside IPv6 (`::ffff:127.0.0.1`, NAT64, 6to4) included. The
//! address check runs at registration and again on every connection the client opens, on the
//! very addresses it then connects to, so a host cannot resolve to a public address for the
//! check and a private one for the call.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use reqwest::Url;

/// The `security` block of the `iii-http-functions` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Security {
    /// Host globs (`*` any run of characters, `?` one), matched case-insensitively against
    /// the URL's host; `["*"]` allows every host.
    pub url_allowlist: Vec<String>,
    /// Refuse non-global addresses, after DNS resolution.
    pub block_private_ips: bool,
    /// Refuse `http://` URLs.
    pub require_https: bool,
}

impl Default for Security {
    fn default() -> Self {
        Security {
            url_allowlist: vec!["*".into()],
            block_private_ips: true,
            require_https: true,
        }
    }
}

/// A URL or address the policy refuses; each message names the knob that would allow it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Not a URL.
    #[error("`{url}` is not a valid URL: {reason}")]
    Malformed {
        /// As given.
        url: String,
        /// The parser's complaint.
        reason: String,
    },
    /// A scheme other than http or https.
    #[error("`{url}` uses the scheme `{scheme}`; HTTP-invoked functions are called over https (or http where allowed)")]
    Scheme {
        /// As given.
        url: String,
        /// Its scheme.
        scheme: String,
    },
    /// http while `require_https` is on.
    #[error("`{url}` is not https; https is required (set `security.require_https: false` in the iii-http-functions entry to allow http)")]
    NotHttps {
        /// As given.
        url: String,
    },
    /// The URL has no host.
    #[error("`{url}` has no host")]
    NoHost {
        /// As given.
        url: String,
    },
    /// The host matches no glob of the allowlist.
    #[error("host `{host}` is not in `security.url_allowlist` ({allowlist})")]
    NotAllowed {
        /// The URL's host.
        host: String,
        /// The configured globs.
        allowlist: String,
    },
    /// The host is, or resolves to, an address of a blocked range.
    #[error("host `{host}` {how} {ip}, a {range} address; calls to non-public addresses are blocked (set `security.block_private_ips: false` in the iii-http-functions entry to allow them)")]
    Blocked {
        /// The URL's host.
        host: String,
        /// "is" for an address literal, "resolves to" after DNS.
        how: &'static str,
        /// The offending address.
        ip: IpAddr,
        /// Which range it is in.
        range: &'static str,
    },
}

/// How long the registration-time lookup of a host may take.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

impl Security {
    /// Checks a URL without I/O: scheme, https, allowlist, and an address literal against the
    /// blocked ranges. Returns the parsed URL.
    pub fn check_url(&self, raw: &str) -> Result<Url, Refused> {
        let url = Url::parse(raw).map_err(|e| Refused::Malformed {
            url: raw.into(),
            reason: e.to_string(),
        })?;
        match url.scheme() {
            "https" => {}
            "http" if !self.require_https => {}
            "http" => return Err(Refused::NotHttps { url: raw.into() }),
            other => {
                return Err(Refused::Scheme {
                    url: raw.into(),
                    scheme: other.into(),
                })
            }
        }
        let host = host_of(&url).ok_or_else(|| Refused::NoHost { url: raw.into() })?;
        if !self.url_allowlist.iter().any(|g| glob_match(g, &host)) {
            return Err(Refused::NotAllowed {
                host,
                allowlist: self.url_allowlist.join(", "),
            });
        }
        if let Some(ip) = literal_ip(&url) {
            self.check_ip(&host, ip, "is")?;
        }
        Ok(url)
    }

    /// Refuses `ip` when private addresses are blocked and it is one.
    pub fn check_ip(&self, host: &str, ip: IpAddr, how: &'static str) -> Result<(), Refused> {
        if !self.block_private_ips {
            return Ok(());
        }
        match blocked_range(ip) {
            Some(range) => Err(Refused::Blocked {
                host: host.into(),
                how,
                ip,
                range,
            }),
            None => Ok(()),
        }
    }

    /// Checks every address `addrs` holds; the first blocked one refuses them all (a host with
    /// one private record is not called at all).
    pub fn check_resolved(
        &self,
        host: &str,
        addrs: impl IntoIterator<Item = SocketAddr>,
    ) -> Result<Vec<SocketAddr>, Refused> {
        addrs
            .into_iter()
            .map(|a| self.check_ip(host, a.ip(), "resolves to").map(|()| a))
            .collect()
    }
}

/// The URL's host as the allowlist sees it: a lower-case domain (punycode), or an address
/// without brackets.
pub fn host_of(url: &Url) -> Option<String> {
    Some(match url.host()? {
        url::Host::Domain(d) => d.to_ascii_lowercase(),
        url::Host::Ipv4(a) => a.to_string(),
        url::Host::Ipv6(a) => a.to_string(),
    })
}

/// The address the URL names directly, if its host is an address literal.
pub fn literal_ip(url: &Url) -> Option<IpAddr> {
    match url.host()? {
        url::Host::Domain(_) => None,
        url::Host::Ipv4(a) => Some(IpAddr::V4(a)),
        url::Host::Ipv6(a) => Some(IpAddr::V6(a)),
    }
}

/// `*` matches any run of characters (dots included), `?` exactly one; case-insensitive.
pub fn glob_match(glob: &str, text: &str) -> bool {
    let (g, t): (Vec<char>, Vec<char>) = (
        glob.to_lowercase().chars().collect(),
        text.to_lowercase().chars().collect(),
    );
    // Iterative matcher with one backtrack point: linear in practice, no recursion.
    let (mut gi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if gi < g.len() && (g[gi] == '?' || g[gi] == t[ti]) {
            gi += 1;
            ti += 1;
        } else if gi < g.len() && g[gi] == '*' {
            star = Some((gi, ti));
            gi += 1;
        } else if let Some((sg, st)) = star {
            gi = sg + 1;
            ti = st + 1;
            star = Some((sg, st + 1));
        } else {
            return false;
        }
    }
    g[gi..].iter().all(|c| *c == '*')
}

/// The blocked range `ip` is in, or `None` for a global unicast address.
pub fn blocked_range(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(a) => v4_range(a),
        IpAddr::V6(a) => v6_range(a),
    }
}

fn v4_range(a: Ipv4Addr) -> Option<&'static str> {
    let o = a.octets();
    let n = u32::from(a);
    let within = |net: u32, bits: u32| n >> (32 - bits) == net >> (32 - bits);
    Some(match () {
        _ if o[0] == 0 => "unspecified (0.0.0.0/8)",
        _ if o[0] == 127 => "loopback",
        _ if o[0] == 10 || within(0xac10_0000, 12) || within(0xc0a8_0000, 16) => "private",
        _ if within(0x6440_0000, 10) => "shared (CGNAT, 100.64.0.0/10)",
        _ if within(0xa9fe_0000, 16) => "link-local",
        _ if within(0xc000_0000, 24) => "IETF protocol assignment (192.0.0.0/24)",
        _ if within(0xc000_0200, 24) || within(0xc633_6400, 24) || within(0xcb00_7100, 24) => {
            "documentation"
        }
        _ if within(0xc612_0000, 15) => "benchmarking (198.18.0.0/15)",
        _ if o[0] >= 224 && o[0] < 240 => "multicast",
        _ if o[0] >= 240 => "reserved (240.0.0.0/4, broadcast)",
        _ => return None,
    })
}

fn v6_range(a: Ipv6Addr) -> Option<&'static str> {
    let s = a.segments();
    let n = u128::from(a);
    let within = |net: u128, bits: u32| n >> (128 - bits) == net >> (128 - bits);
    // IPv4 carried inside IPv6 is judged as the IPv4 address it reaches.
    let embedded = |v: u32| v4_range(Ipv4Addr::from(v));
    Some(match () {
        _ if n == 0 => "unspecified",
        _ if n == 1 => "loopback",
        // ::ffff:a.b.c.d (mapped) reaches the IPv4 address.
        _ if within(0xffff_0000_0000, 96) => return embedded(n as u32),
        // ::a.b.c.d (IPv4-compatible) is deprecated and never routed: blocked whatever it embeds.
        _ if within(0, 96) => return embedded(n as u32).or(Some("IPv4-compatible (::/96)")),
        // NAT64 (64:ff9b::/96) reaches the embedded IPv4 address.
        _ if within(0x0064_ff9b_u128 << 96, 96) => return embedded(n as u32),
        // 6to4 (2002::/16) reaches the IPv4 address in bits 16..48.
        _ if s[0] == 0x2002 => return embedded((n >> 80) as u32),
        _ if within(0x0064_ff9b_0001_u128 << 80, 48) => "local-use NAT64 (64:ff9b:1::/48)",
        _ if within(0x0100_u128 << 112, 64) => "discard-only (100::/64)",
        _ if within(0x2001_0db8_u128 << 96, 32) || within(0x3fff_u128 << 112, 20) => {
            "documentation"
        }
        _ if within(0x2001_u128 << 112, 23) => "IETF protocol assignment (2001::/23)",
        _ if within(0xfc00_u128 << 112, 7) => "unique-local",
        _ if within(0xfe80_u128 << 112, 10) => "link-local",
        _ if within(0xfec0_u128 << 112, 10) => "site-local",
        _ if within(0xff00_u128 << 112, 8) => "multicast",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn every_non_global_range_is_blocked_and_public_addresses_pass() {
        for (a, range) in [
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "unspecified"),
            ("127.0.0.1", "loopback"),
            ("127.255.255.254", "loopback"),
            ("10.0.0.1", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("100.64.0.1", "shared"),
            ("100.127.255.255", "shared"),
            ("169.254.169.254", "link-local"),
            ("192.0.0.8", "IETF"),
            ("192.0.2.1", "documentation"),
            ("198.51.100.7", "documentation"),
            ("203.0.113.9", "documentation"),
            ("198.18.0.1", "benchmarking"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
            ("240.0.0.1", "reserved"),
            ("255.255.255.255", "reserved"),
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("fc00::1", "unique-local"),
            ("fd12:3456::1", "unique-local"),
            ("fe80::1", "link-local"),
            ("fec0::1", "site-local"),
            ("ff02::1", "multicast"),
            ("2001:db8::1", "documentation"),
            ("3fff::1", "documentation"),
            ("100::1", "discard-only"),
            ("2001::1", "IETF"),
            ("64:ff9b:1::1", "local-use NAT64"),
        ] {
            let got = blocked_range(ip(a));
            assert!(
                got.is_some_and(|r| r.starts_with(range)),
                "{a}: expected {range}, got {got:?}"
            );
        }
        for a in [
            "1.1.1.1",
            "8.8.8.8",
            "172.15.255.255",
            "172.32.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "192.0.1.1",
            "198.20.0.1",
            "223.255.255.255",
            "2606:4700:4700::1111",
            "2a00:1450:4001::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert_eq!(blocked_range(ip(a)), None, "{a} is public");
        }
    }

    #[test]
    fn ipv4_inside_ipv6_is_judged_by_the_ipv4_address() {
        assert_eq!(blocked_range(ip("::ffff:127.0.0.1")), Some("loopback"));
        assert_eq!(blocked_range(ip("::ffff:10.1.2.3")), Some("private"));
        assert_eq!(
            blocked_range(ip("::ffff:169.254.169.254")),
            Some("link-local")
        );
        assert_eq!(
            blocked_range(ip("::ffff:0.0.0.0")),
            Some("unspecified (0.0.0.0/8)")
        );
        assert_eq!(blocked_range(ip("::127.0.0.1")), Some("loopback"));
        assert_eq!(blocked_range(ip("64:ff9b::7f00:1")), Some("loopback"));
        assert_eq!(blocked_range(ip("2002:c0a8:0101::1")), Some("private"));
        // The URL parser keeps the mapped form; the check still sees loopback.
        let s = Security::default();
        let e = s
            .check_url("https://[::ffff:127.0.0.1]:8443/x")
            .unwrap_err();
        assert!(
            matches!(
                e,
                Refused::Blocked {
                    range: "loopback",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("block_private_ips"), "{e}");
    }

    #[test]
    fn globs_match_hosts_case_insensitively() {
        assert!(glob_match("*", "api.example.com"));
        assert!(glob_match("*.example.com", "api.example.com"));
        assert!(glob_match("*.example.com", "a.b.example.com"));
        assert!(!glob_match("*.example.com", "example.com"));
        assert!(!glob_match("*.example.com", "example.com.evil.net"));
        assert!(glob_match("API.Example.com", "api.example.com"));
        assert!(glob_match("api-?.example.com", "api-1.example.com"));
        assert!(!glob_match("api-?.example.com", "api-12.example.com"));
        assert!(glob_match("*lambda*", "abc.lambda-url.us-east-1.on.aws"));
        assert!(glob_match("127.0.0.1", "127.0.0.1"));
        assert!(!glob_match("", "a"));
        assert!(glob_match("a**b", "ab"));
    }

    #[test]
    fn urls_are_checked_for_scheme_https_allowlist_and_literal_addresses() {
        let strict = Security::default();
        assert!(strict.check_url("https://api.example.com/fn").is_ok());
        let e = strict.check_url("http://api.example.com/fn").unwrap_err();
        assert!(matches!(e, Refused::NotHttps { .. }));
        assert!(e.to_string().contains("require_https"), "{e}");
        assert!(matches!(
            strict.check_url("ftp://api.example.com/").unwrap_err(),
            Refused::Scheme { .. }
        ));
        assert!(matches!(
            strict.check_url("not a url").unwrap_err(),
            Refused::Malformed { .. }
        ));
        assert!(matches!(
            strict.check_url("https://127.0.0.1/").unwrap_err(),
            Refused::Blocked {
                range: "loopback",
                ..
            }
        ));
        assert!(matches!(
            strict.check_url("https://[fd00::5]/").unwrap_err(),
            Refused::Blocked {
                range: "unique-local",
                ..
            }
        ));
        assert!(strict.check_url("https://8.8.8.8/").is_ok());

        let listed = Security {
            url_allowlist: vec!["*.example.com".into(), "hooks.partner.io".into()],
            ..Security::default()
        };
        assert!(listed.check_url("https://api.example.com/").is_ok());
        assert!(listed.check_url("https://HOOKS.partner.io/x").is_ok());
        let e = listed.check_url("https://evil.net/").unwrap_err();
        assert_eq!(
            e.to_string(),
            "host `evil.net` is not in `security.url_allowlist` (*.example.com, hooks.partner.io)"
        );

        let open = Security {
            url_allowlist: vec!["*".into()],
            block_private_ips: false,
            require_https: false,
        };
        assert!(open.check_url("http://127.0.0.1:8080/x").is_ok());
        assert!(open.check_url("http://[::1]:8080/x").is_ok());
    }

    #[test]
    fn resolved_addresses_are_refused_when_any_is_blocked() {
        let s = Security::default();
        let public: SocketAddr = "93.184.215.14:0".parse().unwrap();
        let private: SocketAddr = "[::ffff:192.168.0.10]:0".parse().unwrap();
        assert_eq!(s.check_resolved("h", [public]).unwrap(), vec![public]);
        let e = s.check_resolved("h", [public, private]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("host `h` resolves to ::ffff:192.168.0.10, a private address"),
            "{e}"
        );
        let open = Security {
            block_private_ips: false,
            ..Security::default()
        };
        assert!(open.check_resolved("h", [private]).is_ok());
    }
}
