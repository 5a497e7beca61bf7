//! How the host stops a sandboxed call, one vocabulary for adapters (components) and policy
//! plugins (Extism modules): the limits a call ran under, what the store saw while it ran,
//! and one classifier from a wasmtime failure to the reason.

use wasmtime::Trap;

/// Why the host stopped a plugin's call. Shown after the plugin's name
/// ("adapter `kv` exceeded its deadline …"), so each message names the knob to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Contained {
    /// The call ran past its wall-clock deadline and was interrupted.
    #[error("exceeded its deadline of {deadline_ms} ms and was stopped (raise `{knob}` if the work is legitimate)")]
    DeadlineExceeded {
        /// The deadline it ran under.
        deadline_ms: u64,
        /// The setting that raises it.
        knob: &'static str,
    },
    /// The instance tried to grow its memory past the cap.
    #[error("hit its memory cap of {limit_mb} MiB (raise `{knob}` if the data is legitimate)")]
    MemoryLimit {
        /// The cap it ran under.
        limit_mb: u64,
        /// The setting that raises it.
        knob: &'static str,
    },
    /// The call used up its fuel (instruction budget).
    #[error("ran out of fuel ({fuel} units per call)")]
    FuelExhausted {
        /// The fuel each call gets.
        fuel: u64,
    },
    /// The plugin reached for something it was not granted.
    #[error("was denied a capability it was not granted: {capability}")]
    CapabilityDenied {
        /// What was refused, e.g. `network tcp connect to 10.0.0.1:80 (not in grants.network)`.
        capability: String,
    },
    /// Any other trap (a panic, `unreachable`, an out-of-bounds access).
    #[error("trapped: {message}")]
    Trap {
        /// wasmtime's description, with its backtrace context.
        message: String,
    },
}

impl Contained {
    /// True when the instance is lost by this failure (everything but a denial, which the
    /// plugin may handle and carry on).
    pub fn loses_the_instance(&self) -> bool {
        !matches!(self, Contained::CapabilityDenied { .. })
    }
}

/// The limits a call ran under and the settings that set them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) deadline_ms: u64,
    pub(crate) memory_mb: u64,
    pub(crate) fuel: Option<u64>,
    /// The settings named in the messages, e.g. `grants.deadline_ms`.
    pub(crate) deadline_knob: &'static str,
    pub(crate) memory_knob: &'static str,
}

/// What the store recorded during the failed call.
pub(crate) struct Observed<'a> {
    /// The memory limiter refused a growth (the trap that follows is its consequence).
    pub(crate) memory_hit: bool,
    /// The first capability check that said no.
    pub(crate) denial: Option<&'a str>,
}

/// Maps a wasmtime failure of a call to the reason the host gives. A refused memory growth
/// or a denied capability explains the trap that follows it, so they come first.
pub(crate) fn classify(
    err: &wasmtime::Error,
    observed: Observed<'_>,
    limits: &Limits,
    deadline_ms: u64,
) -> Contained {
    if observed.memory_hit {
        return Contained::MemoryLimit {
            limit_mb: limits.memory_mb,
            knob: limits.memory_knob,
        };
    }
    if let Some(d) = observed.denial {
        return Contained::CapabilityDenied {
            capability: d.to_string(),
        };
    }
    match err.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => Contained::DeadlineExceeded {
            deadline_ms,
            knob: limits.deadline_knob,
        },
        Some(Trap::OutOfFuel) => Contained::FuelExhausted {
            fuel: limits.fuel.unwrap_or(0),
        },
        _ => Contained::Trap {
            message: format!("{err:#}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        deadline_ms: 100,
        memory_mb: 16,
        fuel: Some(7),
        deadline_knob: "grants.deadline_ms",
        memory_knob: "grants.memory_mb",
    };

    fn nothing() -> Observed<'static> {
        Observed {
            memory_hit: false,
            denial: None,
        }
    }

    #[test]
    fn traps_map_to_their_reason() {
        let interrupt = wasmtime::Error::from(Trap::Interrupt);
        assert_eq!(
            classify(&interrupt, nothing(), &LIMITS, 250),
            Contained::DeadlineExceeded {
                deadline_ms: 250,
                knob: "grants.deadline_ms"
            },
            "the deadline the call ran under, not the default"
        );
        let fuel = wasmtime::Error::from(Trap::OutOfFuel);
        assert_eq!(
            classify(&fuel, nothing(), &LIMITS, 100),
            Contained::FuelExhausted { fuel: 7 }
        );
        let other = wasmtime::Error::from(Trap::UnreachableCodeReached);
        assert!(matches!(
            classify(&other, nothing(), &LIMITS, 100),
            Contained::Trap { message } if message.contains("unreachable")
        ));
    }

    #[test]
    fn a_refused_growth_or_a_denial_explains_the_trap_after_it() {
        let trap = wasmtime::Error::from(Trap::UnreachableCodeReached);
        let both = Observed {
            memory_hit: true,
            denial: Some("network tcp connect to 10.0.0.1:80"),
        };
        let c = classify(&trap, both, &LIMITS, 100);
        assert_eq!(
            c,
            Contained::MemoryLimit {
                limit_mb: 16,
                knob: "grants.memory_mb"
            }
        );
        assert!(c.to_string().contains("raise `grants.memory_mb`"), "{c}");
        let denied = Observed {
            memory_hit: false,
            denial: Some("network tcp connect to 10.0.0.1:80"),
        };
        let c = classify(&trap, denied, &LIMITS, 100);
        assert!(!c.loses_the_instance());
        assert_eq!(
            c,
            Contained::CapabilityDenied {
                capability: "network tcp connect to 10.0.0.1:80".into()
            }
        );
    }
}
