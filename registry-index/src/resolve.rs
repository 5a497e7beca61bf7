//! `ns:name[@range]` → the newest record whose version satisfies the range.

use semver::{Version, VersionReq};

use crate::record::{valid_name, IndexRecord};

/// A plugin reference could not be parsed or matched nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// Not `ns:name[@range]`.
    #[error("`{0}` is not a plugin reference: expected `namespace:name` or `namespace:name@<semver range>` (e.g. `iii:redis@^0.1`)")]
    BadRef(String),
    /// The range is not a semver range.
    #[error("`{reference}`: `{range}` is not a semver range: {reason}")]
    BadRange {
        /// The whole reference.
        reference: String,
        /// The range part.
        range: String,
        /// The parser's message.
        reason: String,
    },
    /// The index has no such plugin.
    #[error("plugin {0} is not in the index")]
    Unknown(String),
    /// No version satisfies the range.
    #[error("no version of {name} satisfies {range} (published: {published}){hint}")]
    NoMatch {
        /// The plugin.
        name: String,
        /// The requested range.
        range: String,
        /// Every published version.
        published: String,
        /// A hint about prereleases.
        hint: String,
    },
}

/// A parsed `ns:name[@range]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginRef {
    /// `ns:name`.
    pub name: String,
    /// The range; `*` when none was given.
    pub range: VersionReq,
    /// The range as written (`*` when none).
    pub range_text: String,
}

impl std::fmt::Display for PluginRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.range_text == "*" {
            write!(f, "{}", self.name)
        } else {
            write!(f, "{}@{}", self.name, self.range_text)
        }
    }
}

/// Parses `ns:name` or `ns:name@<range>` (`@0.1.0` means `^0.1.0`, as in Cargo).
pub fn parse_ref(s: &str) -> Result<PluginRef, ResolveError> {
    let (name, range) = match s.split_once('@') {
        Some((n, r)) => (n, r.trim()),
        None => (s, "*"),
    };
    if !valid_name(name) || range.is_empty() {
        return Err(ResolveError::BadRef(s.to_string()));
    }
    let req = VersionReq::parse(range).map_err(|e| ResolveError::BadRange {
        reference: s.to_string(),
        range: range.to_string(),
        reason: e.to_string(),
    })?;
    Ok(PluginRef {
        name: name.to_string(),
        range: req,
        range_text: range.to_string(),
    })
}

/// Whether `v` satisfies `req`. Without `pre`, prereleases never match (even where semver's own
/// rule would let `>=1.0.0-rc.1` pick one); with it, a prerelease matches when its release would.
pub(crate) fn satisfies(req: &VersionReq, v: &Version, pre: bool) -> bool {
    if v.pre.is_empty() {
        return req.matches(v);
    }
    if !pre {
        return false;
    }
    let mut release = v.clone();
    release.pre = semver::Prerelease::EMPTY;
    req.matches(v) || req.matches(&release)
}

/// The newest record of `r.name` in `records` whose version satisfies `r.range`.
pub fn resolve<'a>(
    records: &'a [IndexRecord],
    r: &PluginRef,
    pre: bool,
) -> Result<&'a IndexRecord, ResolveError> {
    let mine: Vec<(&IndexRecord, Version)> = records
        .iter()
        .filter(|x| x.name == r.name)
        .filter_map(|x| x.semver().map(|v| (x, v)))
        .collect();
    if mine.is_empty() {
        return Err(ResolveError::Unknown(r.name.clone()));
    }
    if let Some((rec, _)) = mine
        .iter()
        .filter(|(_, v)| satisfies(&r.range, v, pre))
        .max_by(|a, b| a.1.cmp(&b.1))
    {
        return Ok(rec);
    }
    let mut published: Vec<&Version> = mine.iter().map(|(_, v)| v).collect();
    published.sort();
    let hint = if !pre
        && mine
            .iter()
            .any(|(_, v)| !v.pre.is_empty() && satisfies(&r.range, v, true))
    {
        "; prereleases are excluded unless asked for (--pre)".to_string()
    } else {
        String::new()
    };
    Err(ResolveError::NoMatch {
        name: r.name.clone(),
        range: r.range_text.clone(),
        published: published
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        hint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::rec;

    fn index() -> Vec<IndexRecord> {
        [
            "0.1.0",
            "0.1.3",
            "0.2.0-rc.1",
            "0.2.0",
            "0.3.0-beta.2",
            "1.0.0",
        ]
        .iter()
        .map(|v| rec("iii:redis", v))
        .chain([rec("iii:queue", "0.1.0")])
        .collect()
    }

    #[test]
    fn newest_in_range() {
        let i = index();
        let v = |s: &str, pre| resolve(&i, &parse_ref(s).unwrap(), pre).map(|r| r.version.clone());
        assert_eq!(v("iii:redis", false).unwrap(), "1.0.0");
        assert_eq!(v("iii:redis@^0.1", false).unwrap(), "0.1.3");
        assert_eq!(v("iii:redis@0.1.0", false).unwrap(), "0.1.3");
        assert_eq!(v("iii:redis@=0.1.0", false).unwrap(), "0.1.0");
        assert_eq!(v("iii:redis@^0.2", false).unwrap(), "0.2.0");
        assert_eq!(v("iii:queue", false).unwrap(), "0.1.0");
    }

    #[test]
    fn prereleases_only_when_asked() {
        let i = index();
        let r = parse_ref("iii:redis@^0.3").unwrap();
        let e = resolve(&i, &r, false).unwrap_err().to_string();
        assert!(e.contains("no version of iii:redis satisfies ^0.3"), "{e}");
        assert!(e.contains("--pre"), "{e}");
        assert_eq!(resolve(&i, &r, true).unwrap().version, "0.3.0-beta.2");
        // Even semver's own prerelease rule does not sneak one in without `pre`.
        let r = parse_ref("iii:redis@>=0.2.0-rc.1, <0.2.0").unwrap();
        assert!(resolve(&i, &r, false).is_err());
        assert_eq!(resolve(&i, &r, true).unwrap().version, "0.2.0-rc.1");
    }

    #[test]
    fn bad_refs_and_unknown_names() {
        for bad in ["redis", "iii:", "III:redis", "iii:redis@", "iii:re dis"] {
            assert!(
                matches!(parse_ref(bad), Err(ResolveError::BadRef(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            parse_ref("iii:redis@^x"),
            Err(ResolveError::BadRange { .. })
        ));
        let e = resolve(&index(), &parse_ref("iii:nope").unwrap(), false).unwrap_err();
        assert_eq!(e.to_string(), "plugin iii:nope is not in the index");
    }
}
