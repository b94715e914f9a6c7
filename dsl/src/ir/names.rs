//! What the IR's choices are called: one table per enum (`ALL` and `name()`), which the DSL's
//! lowering, its printer, the checks, the plan's summaries and the code generator read instead of
//! spelling the names again. serde's YAML tags are the same names (a test below checks), so a
//! new variant is named here once.

use super::*;

/// `ALL` (every variant, in the table's order) and `name()` for an enum of unit variants, from one
/// `Variant => "name"` list.
macro_rules! names {
    ($ty:ident { $($v:ident => $n:literal),+ $(,)? }) => {
        impl $ty {
            /// Every variant.
            pub const ALL: [$ty; [$(names!(@one $v)),+].len()] = [$($ty::$v),+];

            /// `(name, variant)` for every variant, as the DSL's readers take their choices.
            pub fn choices() -> [(&'static str, $ty); [$(names!(@one $v)),+].len()] {
                Self::ALL.map(|v| (v.name(), v))
            }

            /// The variant's name in the DSL, the YAML and the summaries.
            pub fn name(self) -> &'static str {
                match self {
                    $($ty::$v => $n),+
                }
            }
        }
    };
    (@one $v:ident) => {
        ()
    };
}

names!(NormKind { Rms => "rms", Layer => "layer" });
names!(NormPlacement { Pre => "pre", Post => "post", Sandwich => "sandwich" });
names!(MlpKind {
    Gelu => "gelu",
    GeluTanh => "gelu_tanh",
    ReluSquared => "relu_squared",
    Swiglu => "swiglu",
    Geglu => "geglu",
    GegluTanh => "geglu_tanh",
});
names!(QkNormScope { Head => "head", Full => "full" });
names!(RopeStyle { HalfSplit => "half_split", Interleaved => "interleaved" });
names!(RouterOrder {
    SoftmaxTopk => "softmax_topk",
    TopkSoftmax => "topk_softmax",
    SigmoidTopk => "sigmoid_topk",
});
names!(Weighting { Output => "output", Input => "input" });
names!(Naming {
    Llama => "llama",
    Gpt2 => "gpt2",
    GptNeox => "gpt_neox",
    Falcon => "falcon",
    Phi => "phi",
});
names!(QkvLayout {
    Separate => "separate",
    Fused => "fused",
    FusedPerHead => "fused_per_head",
});

impl NormKind {
    /// Subtracts the row's mean before scaling (LayerNorm). A centred kind takes a learned bias,
    /// and has one unless the spec says `bias = false`.
    pub fn centred(self) -> bool {
        match self {
            NormKind::Rms => false,
            NormKind::Layer => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt::Debug;

    fn tags_match<T: Serialize + Copy + Debug>(all: &[T], name: fn(T) -> &'static str) {
        for &v in all {
            let yaml = serde_norway::to_string(&v).expect("a unit variant serialises");
            assert_eq!(yaml.trim(), name(v), "{v:?}");
        }
    }

    /// Each table's names are serde's YAML tags too, on every variant (`name()`'s match is
    /// exhaustive, so a table lists every variant).
    #[test]
    fn names_are_the_yaml_tags() {
        tags_match(&NormKind::ALL, NormKind::name);
        tags_match(&NormPlacement::ALL, NormPlacement::name);
        tags_match(&MlpKind::ALL, MlpKind::name);
        tags_match(&QkNormScope::ALL, QkNormScope::name);
        tags_match(&RopeStyle::ALL, RopeStyle::name);
        tags_match(&RouterOrder::ALL, RouterOrder::name);
        tags_match(&Weighting::ALL, Weighting::name);
        tags_match(&Naming::ALL, Naming::name);
        tags_match(&QkvLayout::ALL, QkvLayout::name);
    }
}
