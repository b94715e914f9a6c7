//! Provenance: where each field was written, to place IR issues back in the source.

use super::*;

#[derive(Debug, Clone)]
pub(super) struct ProvEntry {
    pub(super) field: String,
    pub(super) rule: Option<usize>,
    pub(super) span: Span,
}

/// Where each IR field was written, so that [`Issue`]s can be shown at the user's text.
#[derive(Debug, Clone, Default)]
pub struct Provenance {
    pub(super) header: Span,
    pub(super) n_layers: u64,
    pub(super) entries: Vec<ProvEntry>,
    pub(super) rule_layers: Vec<Vec<u64>>,
    /// Non-fatal findings (a rule's setting that a later rule overrides on every layer).
    pub(super) warnings: Vec<Diagnostic>,
}

impl Provenance {
    /// The span where `field` (an IR path without the layer prefix) was written for `layer`, or
    /// the model header when it was a default.
    pub fn span_of(&self, field: &str, layer: Option<u64>) -> Span {
        let mut candidates = vec![field.to_string()];
        let aliases: &[(&str, &[&str])] = &[
            ("vocab_padded", &["vocab_pad_multiple", "vocab"]),
            ("attention.head_dim", &["attention.heads"]),
            ("attention.scale", &["attention.head_dim"]),
            ("position.rotary_dims", &["position.fraction"]),
            ("layers", &["n_layers"]),
        ];
        for (from, to) in aliases {
            if field == *from {
                candidates.extend(to.iter().map(|s| s.to_string()));
            }
        }
        for cand in candidates {
            let mut f = cand.as_str();
            loop {
                if let Some(span) = self.find(f, layer) {
                    return span;
                }
                match f.rfind('.') {
                    Some(dot) => f = &f[..dot],
                    None => break,
                }
            }
        }
        self.header.clone()
    }

    /// Non-fatal findings of lowering: today, a `layers[...]` setting that later rules override
    /// on every layer it selects, so it never takes effect (the last matching rule wins).
    pub fn warnings(&self) -> &[Diagnostic] {
        &self.warnings
    }

    /// Number of layers of the model.
    pub fn n_layers(&self) -> u64 {
        self.n_layers
    }

    /// Whether the user wrote `field` (at model level or in a rule).
    pub fn wrote(&self, field: &str) -> bool {
        self.entries.iter().any(|e| e.field == field)
    }

    fn find(&self, field: &str, layer: Option<u64>) -> Option<Span> {
        self.entries.iter().rev().find_map(|e| {
            if e.field != field {
                return None;
            }
            match (e.rule, layer) {
                (None, _) => Some(e.span.clone()),
                (Some(r), Some(l)) => self
                    .rule_layers
                    .get(r)
                    .filter(|ls| ls.contains(&l))
                    .map(|_| e.span.clone()),
                (Some(_), None) => None,
            }
        })
    }
}
