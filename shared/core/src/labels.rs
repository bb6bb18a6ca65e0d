//! Label keys and values, with Kubernetes' rules.
//!
//! Resources are Kubernetes-shaped, so labels follow the same syntax: a document exported from
//! Dragonfly can be applied to a real cluster's CRDs without rewriting its labels.

use std::collections::BTreeMap;

/// Why a label is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    #[error(
        "label key {0:?}: must be [prefix/]name, name 1-63 characters of [A-Za-z0-9._-] starting and ending alphanumeric, prefix a DNS subdomain"
    )]
    Key(String),
    #[error(
        "label {key:?}: value {value:?} must be at most 63 characters of [A-Za-z0-9._-], starting and ending alphanumeric"
    )]
    Value { key: String, value: String },
    #[error("more than {0} labels")]
    TooMany(usize),
}

/// Most labels a resource may carry.
pub const MAX_LABELS: usize = 64;

fn is_name(s: &str, allow_empty: bool) -> bool {
    if s.is_empty() {
        return allow_empty;
    }
    let b = s.as_bytes();
    s.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            let b = l.as_bytes();
            !l.is_empty()
                && l.len() <= 63
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        })
}

fn short(s: &str) -> String {
    s.chars().take(80).collect()
}

/// Checks one key.
pub fn validate_key(key: &str) -> Result<(), LabelError> {
    let ok = match key.split_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_name(name, false),
        None => is_name(key, false),
    };
    if ok {
        Ok(())
    } else {
        Err(LabelError::Key(short(key)))
    }
}

/// Checks a whole label set.
pub fn validate(labels: &BTreeMap<String, String>) -> Result<(), LabelError> {
    if labels.len() > MAX_LABELS {
        return Err(LabelError::TooMany(MAX_LABELS));
    }
    for (k, v) in labels {
        validate_key(k)?;
        if !is_name(v, true) {
            return Err(LabelError::Value {
                key: short(k),
                value: short(v),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(k: &str, v: &str) -> BTreeMap<String, String> {
        [(k.to_owned(), v.to_owned())].into()
    }

    #[test]
    fn accepts_kubernetes_style_labels() {
        for (k, v) in [
            ("rack", "r12"),
            ("dragonfly.computer/role", "storage"),
            ("a", ""),
            ("x.y_z-1", "A.b_c-9"),
        ] {
            assert_eq!(validate(&one(k, v)), Ok(()), "{k}={v}");
        }
    }

    #[test]
    fn refuses_bad_labels() {
        for (k, v) in [
            ("", "x"),
            ("-a", "x"),
            ("a/", "x"),
            ("/a", "x"),
            ("Upper.Case/a", "x"),
            ("a", "-x"),
            ("a", "x y"),
            (&"a".repeat(64), "x"),
            ("a", &"b".repeat(64)),
        ] {
            assert!(validate(&one(k, v)).is_err(), "{k}={v}");
        }
        let many: BTreeMap<_, _> = (0..=MAX_LABELS)
            .map(|i| (format!("k{i}"), String::new()))
            .collect();
        assert_eq!(validate(&many), Err(LabelError::TooMany(MAX_LABELS)));
    }
}
