//! Worker name validation (workers-and-sandboxes spec section 3.0), checked before any file is written.
//!
//! A name becomes a config entry, an `iii.lock` key and a directory name under the state root,
//! so it must be one safe path component.

/// Why a worker name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("Worker name cannot be empty")]
    Empty,
    #[error("Worker name '{0}' contains '..' sequence")]
    DotDot(String),
    #[error("Worker name '{0}' cannot start with '.' (reserved for hidden files)")]
    LeadingDot(String),
    #[error("Worker name '{0}' contains invalid characters. Only alphanumeric, dash, underscore, and dot are allowed.")]
    InvalidChars(String),
}

/// Accepts a non-empty name of `[A-Za-z0-9_.-]` that neither contains `..` nor starts with `.`.
pub fn validate(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.contains("..") {
        return Err(NameError::DotDot(name.into()));
    }
    if name.starts_with('.') {
        return Err(NameError::LeadingDot(name.into()));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(NameError::InvalidChars(name.into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_usual_names() {
        for n in ["pdfkit", "my-worker", "a_b", "v1.2", "iii-sandbox", "X9"] {
            assert_eq!(validate(n), Ok(()), "{n}");
        }
    }

    #[test]
    fn refuses_each_rule_with_its_message() {
        assert_eq!(validate(""), Err(NameError::Empty));
        assert!(matches!(validate("a..b"), Err(NameError::DotDot(_))));
        assert!(matches!(validate(".."), Err(NameError::DotDot(_))));
        assert!(matches!(validate(".hidden"), Err(NameError::LeadingDot(_))));
        for bad in ["a/b", "a b", "a:b", "é", "a\nb", "a@1", "-\t"] {
            let e = validate(bad).unwrap_err();
            assert!(matches!(e, NameError::InvalidChars(_)), "{bad}: {e}");
            assert!(e
                .to_string()
                .contains("Only alphanumeric, dash, underscore, and dot"));
        }
    }
}
