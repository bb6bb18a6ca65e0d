//! [`Chain`]: an error with every one of its causes, on one line, for log lines and messages.
//!
//! Errors here follow one rule: a `Display` text never repeats its source
//! (`#[error("reading {path}")]` plus `#[source]`), so each cause is printed once. The price is
//! that `error = %e` prints only the outermost message ("database error" and nothing more).
//! Every log line and every message that shows an error therefore goes through [`Chain`].
//!
//! It lives in this crate, the lowest one every other depends on, so that the store, the bus,
//! the runtime, the daemons and the agent print errors alike. It is formatting only: no I/O.

use std::error::Error;
use std::fmt;

/// Displays an error followed by each of its sources, `: `-separated: what `anyhow`'s `{:#}`
/// does, for code that holds a plain `dyn Error`.
///
/// ```
/// # use dragonfly_core::Chain;
/// let e = std::io::Error::other("disk on fire");
/// // tracing::error!(error = %Chain(&e), "cannot write the lease");
/// assert_eq!(Chain(&e).to_string(), "disk on fire");
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Chain<'a>(pub &'a dyn Error);

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("a")]
    struct A(#[source] B);

    #[derive(Debug, thiserror::Error)]
    #[error("b")]
    struct B(#[source] C);

    #[derive(Debug, thiserror::Error)]
    #[error("c")]
    struct C;

    #[test]
    fn prints_every_level_once_in_order() {
        let err = A(B(C));
        assert_eq!(err.to_string(), "a", "the top level alone loses b and c");
        assert_eq!(Chain(&err).to_string(), "a: b: c");
        assert_eq!(format!("{}", Chain(&err.0)), "b: c");
        assert_eq!(Chain(&C).to_string(), "c");
    }

    #[test]
    fn works_through_a_boxed_trait_object() {
        let boxed: Box<dyn Error + Send + Sync> = Box::new(A(B(C)));
        assert_eq!(Chain(boxed.as_ref()).to_string(), "a: b: c");
    }
}
