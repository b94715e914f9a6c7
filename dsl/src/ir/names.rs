//! What the IR's choices are called: one table per enum (`ALL` and `name()`), which the DSL's
//! lowering, its printer, the checks, the plan's summaries and the code generator read instead of
//! spelling the names again. serde's YAML tags are the same names (a test below checks), so a
//! new variant is named here once.

use super::*;

impl NormKind {
    /// Every kind.
    pub const ALL: [NormKind; 2] = [NormKind::Rms, NormKind::Layer];

    /// The kind's name: the DSL's function (`rms(...)`), the YAML tag, the generated docs'.
    pub fn name(self) -> &'static str {
        match self {
            NormKind::Rms => "rms",
            NormKind::Layer => "layer",
        }
    }

    /// Subtracts the row's mean before scaling (LayerNorm). A centred kind takes a learned bias,
    /// and has one unless the spec says `bias = false`.
    pub fn centred(self) -> bool {
        match self {
            NormKind::Rms => false,
            NormKind::Layer => true,
        }
    }
}

impl NormPlacement {
    /// Every placement.
    pub const ALL: [NormPlacement; 3] = [
        NormPlacement::Pre,
        NormPlacement::Post,
        NormPlacement::Sandwich,
    ];

    /// `pre`, `post` or `sandwich` (`placement sandwich` in the DSL).
    pub fn name(self) -> &'static str {
        match self {
            NormPlacement::Pre => "pre",
            NormPlacement::Post => "post",
            NormPlacement::Sandwich => "sandwich",
        }
    }
}

impl MlpKind {
    /// Every kind, in declaration order.
    pub const ALL: [MlpKind; 6] = [
        MlpKind::Gelu,
        MlpKind::GeluTanh,
        MlpKind::ReluSquared,
        MlpKind::Swiglu,
        MlpKind::Geglu,
        MlpKind::GegluTanh,
    ];

    /// The kind's name: the DSL's function (`swiglu(hidden = ...)`), the YAML tag, the summaries'.
    pub fn name(self) -> &'static str {
        match self {
            MlpKind::Gelu => "gelu",
            MlpKind::GeluTanh => "gelu_tanh",
            MlpKind::ReluSquared => "relu_squared",
            MlpKind::Swiglu => "swiglu",
            MlpKind::Geglu => "geglu",
            MlpKind::GegluTanh => "geglu_tanh",
        }
    }

    /// The kind named `name`, if any.
    pub fn named(name: &str) -> Option<MlpKind> {
        MlpKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml_tag<T: Serialize>(v: T) -> String {
        serde_norway::to_string(&v)
            .expect("a unit variant serialises")
            .trim()
            .to_string()
    }

    /// Each table's names are serde's YAML tags too, on every variant.
    #[test]
    fn names_are_the_yaml_tags() {
        for k in NormKind::ALL {
            assert_eq!(yaml_tag(k), k.name(), "{k:?}");
        }
        for p in NormPlacement::ALL {
            assert_eq!(yaml_tag(p), p.name(), "{p:?}");
        }
        for k in MlpKind::ALL {
            assert_eq!(yaml_tag(k), k.name(), "{k:?}");
            assert_eq!(MlpKind::named(k.name()), Some(k));
        }
    }
}
