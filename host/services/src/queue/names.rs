//! Internal queue names in the adapter. The service builds them; the adapter treats them as
//! opaque. Each kind has its own prefix and every part is escaped, so a name parses back
//! unambiguously whatever the topic, function id or namespace contain (upstream's
//! `"<topic>::<function>"@<ns>` cannot tell topic `a` + function `b::c` from topic `a::b` +
//! function `c`).

/// What an internal queue holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum QueueName {
    /// One subscriber function's durable copy of a topic (`durable:subscriber`).
    Subscriber {
        topic: String,
        function_id: String,
        namespace: String,
    },
    /// A named queue of `queue_configs` (`TriggerAction.Enqueue`).
    Named(String),
    /// Messages published to a topic while it had no subscriber; handed to the first one.
    Unrouted(String),
}

fn esc(s: &str, out: &mut String) {
    for c in s.chars() {
        if c == '\\' || c == '/' {
            out.push('\\');
        }
        out.push(c);
    }
}

/// Splits at unescaped `/` and unescapes the parts.
fn split(s: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let (Some(n), Some(p)) = (chars.next(), parts.last_mut()) {
                    p.push(n);
                }
            }
            '/' => parts.push(String::new()),
            c => {
                if let Some(p) = parts.last_mut() {
                    p.push(c);
                }
            }
        }
    }
    parts
}

impl QueueName {
    /// The adapter-side name.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        match self {
            QueueName::Subscriber {
                topic,
                function_id,
                namespace,
            } => {
                out.push_str("t/");
                esc(topic, &mut out);
                out.push('/');
                esc(function_id, &mut out);
                out.push('/');
                esc(namespace, &mut out);
            }
            QueueName::Named(q) => {
                out.push_str("q/");
                esc(q, &mut out);
            }
            QueueName::Unrouted(t) => {
                out.push_str("u/");
                esc(t, &mut out);
            }
        }
        out
    }

    /// Parses an adapter-side name; `None` for a name this service did not make.
    pub(crate) fn decode(s: &str) -> Option<QueueName> {
        let mut p = split(s).into_iter();
        let kind = p.next()?;
        let rest: Vec<String> = p.collect();
        match (kind.as_str(), rest.as_slice()) {
            ("t", [t, f, n]) => Some(QueueName::Subscriber {
                topic: t.clone(),
                function_id: f.clone(),
                namespace: n.clone(),
            }),
            ("q", [q]) => Some(QueueName::Named(q.clone())),
            ("u", [t]) => Some(QueueName::Unrouted(t.clone())),
            _ => None,
        }
    }

    /// The user-facing name: the topic, or the named queue.
    pub(crate) fn public(&self) -> &str {
        match self {
            QueueName::Subscriber { topic, .. } | QueueName::Unrouted(topic) => topic,
            QueueName::Named(q) => q,
        }
    }

    /// `broker_type` in listings.
    pub(crate) fn broker_type(&self) -> &'static str {
        match self {
            QueueName::Named(_) => "function_queue",
            _ => "builtin",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_whatever_they_contain() {
        for n in [
            QueueName::Subscriber {
                topic: "a::b".into(),
                function_id: "c".into(),
                namespace: "default".into(),
            },
            QueueName::Subscriber {
                topic: "a".into(),
                function_id: "b::c".into(),
                namespace: "x/y\\z@w".into(),
            },
            QueueName::Named("pay/ments".into()),
            QueueName::Unrouted("orders".into()),
        ] {
            assert_eq!(QueueName::decode(&n.encode()), Some(n.clone()), "{n:?}");
        }
        assert_ne!(
            QueueName::Subscriber {
                topic: "a::b".into(),
                function_id: "c".into(),
                namespace: "d".into()
            }
            .encode(),
            QueueName::Subscriber {
                topic: "a".into(),
                function_id: "b::c".into(),
                namespace: "d".into()
            }
            .encode()
        );
        assert_eq!(QueueName::decode("orders"), None);
    }
}
