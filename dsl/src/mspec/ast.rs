//! The syntax tree of a `.mspec` file: the model header and a tree of atoms, each with its span.
//!
//! The tree is deliberately schema-free (see `grammar.pest`): `lower` reads it against the
//! schema of keys, which gives precise diagnostics (unknown keys with a suggestion, wrong value
//! types, duplicates) and lets it collect every error instead of stopping at the first.

use std::ops::Range;

/// A byte range in the source.
pub type Span = Range<usize>;

/// A parsed `.mspec` file: `model NAME { ... }`.
#[derive(Debug, Clone, PartialEq)]
pub struct File {
    /// The model's name as written after `model`.
    pub name: String,
    /// Span of the name.
    pub name_span: Span,
    /// Span of the whole `model NAME` header (where defaults are reported).
    pub header_span: Span,
    /// The atoms inside the model's braces.
    pub body: Vec<Node>,
}

/// One atom with its span.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// What the atom is.
    pub kind: NodeKind,
    /// Where it is in the source.
    pub span: Span,
}

/// The kinds of atoms.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    /// A key or a word value: `vocab`, `swiglu`, `attention.window`.
    Ident(String),
    /// A number as written (digits, underscores, exponent, unit suffix); interpreted by `lower`.
    Number(String),
    /// `a..b`, as written.
    Range(String),
    /// `name(args...)`.
    Call {
        /// The function-like name.
        name: String,
        /// Span of the name.
        name_span: Span,
        /// The atoms between the parentheses.
        args: Vec<Node>,
    },
    /// `[atoms...]`.
    List(Vec<Node>),
    /// `{ atoms... }`.
    Block(Vec<Node>),
    /// `=`.
    Eq,
    /// `,`.
    Comma,
}

impl Node {
    /// The identifier text, if this atom is an identifier.
    pub fn ident(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Ident(s) => Some(s),
            _ => None,
        }
    }

    /// A short description of the atom for "found ..." in diagnostics.
    pub fn describe(&self) -> String {
        match &self.kind {
            NodeKind::Ident(s) => format!("`{s}`"),
            NodeKind::Number(s) => format!("number `{s}`"),
            NodeKind::Range(s) => format!("range `{s}`"),
            NodeKind::Call { name, .. } => format!("`{name}(...)`"),
            NodeKind::List(_) => "a `[...]` list".to_string(),
            NodeKind::Block(_) => "a `{...}` block".to_string(),
            NodeKind::Eq => "`=`".to_string(),
            NodeKind::Comma => "`,`".to_string(),
        }
    }
}
