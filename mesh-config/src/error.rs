//! Errors of the MeshConfig document. A document is either too big to be worth reading
//! (`Bounds`), unreadable as YAML/JSON at all (`Syntax`), or readable with field problems, which
//! are all collected so a user fixes a file in one round instead of one error per try.

use std::fmt;

/// One problem with one field, named by its dotted path (`spec.observability.tracing.port`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl FieldError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The text is neither valid YAML nor valid JSON.
    #[error("cannot parse the document: {0}")]
    Syntax(String),
    /// The document parsed but some fields are wrong; every one is listed.
    #[error("{}", join(.0))]
    Invalid(Vec<FieldError>),
    /// The text is over a limit checked before parsing (see `bounded`): it was not parsed.
    #[error("the document is refused before parsing: {0}")]
    Bounds(Bound),
}

/// A limit on the text of a document, each named with its value so the user knows what to cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Bound {
    #[error("larger than the limit of {limit} bytes")]
    Size { limit: usize },
    #[error("nested deeper than the limit of {limit} levels")]
    Depth { limit: usize },
    #[error(
        "more than the limit of {limit} values (YAML aliases expanded; the limit is {} per byte \
         of the document, at most {})",
        crate::bounded::VALUES_PER_BYTE,
        crate::bounded::MAX_VALUES
    )]
    Values { limit: usize },
}

impl ConfigError {
    /// Every field problem (empty for a syntax error).
    pub fn problems(&self) -> &[FieldError] {
        match self {
            ConfigError::Syntax(_) | ConfigError::Bounds(_) => &[],
            ConfigError::Invalid(problems) => problems,
        }
    }
}

/// One line, `; `-separated, so the message fits a log line and a process's exit reason.
fn join(problems: &[FieldError]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_lists_every_problem_with_its_path() {
        let err = ConfigError::Invalid(vec![
            FieldError::new("spec.a", "bad"),
            FieldError::new("spec.b", "worse"),
        ]);
        assert_eq!(err.to_string(), "spec.a: bad; spec.b: worse");
        assert_eq!(err.problems().len(), 2);
    }
}
