//! [`SpecError`]: what went wrong with a spec, and where in its text.

use core::fmt;
use core::ops::Range;

/// A spec that could not be parsed or built: the spec, the bytes of it that
/// are at fault, and what was wrong and expected there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    spec: String,
    span: Range<usize>,
    message: String,
}

impl SpecError {
    /// An error about `span` of `spec`.
    pub(super) fn new(spec: &str, span: Range<usize>, message: impl Into<String>) -> Self {
        Self {
            spec: spec.to_owned(),
            span,
            message: message.into(),
        }
    }

    /// The 1-based byte column where the problem starts.
    pub fn column(&self) -> usize {
        self.span.start + 1
    }

    /// The bytes of the spec the problem covers (at least one byte unless
    /// the problem is at the end of the spec).
    pub fn span(&self) -> Range<usize> {
        self.span.clone()
    }

    /// What was wrong and what was expected, without the position.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The whole spec.
    pub fn spec(&self) -> &str {
        &self.spec
    }

    /// The spec with a line of carets under the problem, for terminals.
    pub fn caret_diagram(&self) -> String {
        let start = floor_char_boundary(&self.spec, self.span.start);
        let end = floor_char_boundary(&self.spec, self.span.end).max(start);
        let pad = self.spec[..start].chars().count();
        let width = self.spec[start..end].chars().count().max(1);
        format!(
            "  {}\n  {}{}",
            self.spec,
            " ".repeat(pad),
            "^".repeat(width)
        )
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spec error at column {} of '{}': {}",
            self.column(),
            self.spec,
            self.message
        )
    }
}

impl core::error::Error for SpecError {}
