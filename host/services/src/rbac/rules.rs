//! The pieces of RBAC's decision (PROTOCOL.md §9.3): wildcard patterns, grants and the
//! `expose_functions` rules.

use serde_json::Value;

/// A function-id pattern: `*` matches any run of characters (`::` included); a pattern
/// without `*` matches only itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern(String);

impl Pattern {
    /// A pattern from its text: bare (`svc::*`) or wrapped (`match("svc::*")`, `match('…')`).
    pub fn parse(text: &str) -> Pattern {
        Pattern(unwrap_match(text).unwrap_or(text).to_string())
    }

    /// Does `s` match? The first literal part must be a prefix, the last a suffix, and the
    /// parts between must appear in order.
    pub fn matches(&self, s: &str) -> bool {
        let p = self.0.as_str();
        if !p.contains('*') {
            return p == s;
        }
        let parts: Vec<&str> = p.split('*').collect();
        let (first, last) = (parts[0], parts[parts.len() - 1]);
        if s.len() < first.len() + last.len() || !s.starts_with(first) || !s.ends_with(last) {
            return false;
        }
        let mut rest = &s[first.len()..s.len() - last.len()];
        for mid in &parts[1..parts.len() - 1] {
            match rest.find(mid) {
                Some(at) => rest = &rest[at + mid.len()..],
                None => return false,
            }
        }
        true
    }
}

/// The pattern inside `match("…")` or `match('…')`, if `text` is one.
pub fn unwrap_match(text: &str) -> Option<&str> {
    let inner = text
        .trim()
        .strip_prefix("match(")?
        .strip_suffix(')')?
        .trim();
    inner
        .strip_prefix('"')
        .and_then(|i| i.strip_suffix('"'))
        .or_else(|| inner.strip_prefix('\'').and_then(|i| i.strip_suffix('\'')))
}

/// One `expose_functions` entry.
#[derive(Debug, Clone, PartialEq)]
pub enum Rule {
    /// Functions whose id matches, in `namespace`.
    Match {
        /// The id pattern.
        pattern: Pattern,
        /// The namespace the rule applies to (`default` unless given).
        namespace: String,
    },
    /// Functions whose registration metadata has every listed key matching, in `namespace`.
    Metadata {
        /// Key → expected value (`Value::String("match(…)")` values are patterns).
        wanted: Vec<(String, Expected)>,
        /// The namespace the rule applies to (`default` unless given).
        namespace: String,
    },
}

/// What one metadata key of a rule expects.
#[derive(Debug, Clone, PartialEq)]
pub enum Expected {
    /// Exact JSON equality.
    Equal(Value),
    /// A string value matching the pattern.
    Like(Pattern),
}

impl Expected {
    /// An expected value from config: a `match("…")` string is a pattern, anything else exact.
    pub fn from_value(v: Value) -> Expected {
        match v.as_str().and_then(unwrap_match) {
            Some(p) => Expected::Like(Pattern(p.to_string())),
            None => Expected::Equal(v),
        }
    }

    fn accepts(&self, v: Option<&Value>) -> bool {
        match (self, v) {
            (Expected::Equal(e), Some(v)) => e == v,
            (Expected::Like(p), Some(Value::String(s))) => p.matches(s),
            _ => false,
        }
    }
}

impl Rule {
    /// Does the rule expose `id` in `ns`? `metadata` is the target's registration metadata
    /// (`None` when the function does not exist, which only `Match` rules can expose).
    pub fn exposes(&self, id: &str, ns: &str, metadata: Option<&Value>) -> bool {
        match self {
            Rule::Match { pattern, namespace } => namespace == ns && pattern.matches(id),
            Rule::Metadata { wanted, namespace } => {
                namespace == ns
                    && metadata.is_some_and(|m| wanted.iter().all(|(k, e)| e.accepts(m.get(k))))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn wildcards_anchor_their_ends() {
        let p = Pattern::parse("svc::*");
        assert!(p.matches("svc::a") && p.matches("svc::a::b") && p.matches("svc::"));
        assert!(!p.matches("xsvc::a") && !p.matches("svc:a"));
        let p = Pattern::parse("match(\"*::create\")");
        assert!(p.matches("link::create") && !p.matches("link::created"));
        let p = Pattern::parse("match('a*b*c')");
        assert!(p.matches("abc") && p.matches("a-b-c") && p.matches("axxbyyc"));
        assert!(!p.matches("ac") && !p.matches("acb"));
        assert!(Pattern::parse("*").matches("anything::at::all"));
        let exact = Pattern::parse("link::create");
        assert!(exact.matches("link::create") && !exact.matches("link::create2"));
        // A prefix and suffix that overlap in the subject do not both count.
        assert!(!Pattern::parse("ab*ba").matches("aba"));
    }

    #[test]
    fn rules_check_namespace_and_metadata() {
        let r = Rule::Match {
            pattern: Pattern::parse("svc::*"),
            namespace: "orders".into(),
        };
        assert!(r.exposes("svc::x", "orders", None));
        assert!(!r.exposes("svc::x", "default", None));
        let r = Rule::Metadata {
            wanted: vec![
                ("public".into(), Expected::from_value(json!(true))),
                (
                    "tier".into(),
                    Expected::from_value(json!("match(\"pro*\")")),
                ),
            ],
            namespace: "default".into(),
        };
        assert!(r.exposes(
            "a",
            "default",
            Some(&json!({"public": true, "tier": "pro-1"}))
        ));
        assert!(!r.exposes(
            "a",
            "default",
            Some(&json!({"public": true, "tier": "free"}))
        ));
        assert!(!r.exposes("a", "default", Some(&json!({"tier": "pro"}))));
        assert!(
            !r.exposes("a", "default", None),
            "a missing function has no metadata"
        );
        assert!(!r.exposes(
            "a",
            "default",
            Some(&json!({"public": "true", "tier": "pro"}))
        ));
    }
}
