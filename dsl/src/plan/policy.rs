//! Checkpoint policies and memory budgets: the one parser that the `.mspec` reader, the YAML
//! reader and the command line (`--checkpoint POLICY`) all call, so a string means the same policy
//! wherever it is written.
//!
//! Policies: `none`, `full`, `auto`, `save(a, b)`, `recompute(a, b)`, and (on the command line,
//! where a global budget replaces the spec's) `budget(0.5)`, `budget(24GiB)`.
//!
//! **Budgets.** A number without a unit is a fraction of the no-checkpoint activation memory and
//! must lie in `[0, 1]`. A number with a unit is a byte size. Units, case-sensitive:
//!
//! | unit | bytes | | unit | bytes |
//! |---|---|---|---|---|
//! | `B` | 1 | | | |
//! | `kB`, `KB` | 10³ | | `KiB` | 2¹⁰ |
//! | `MB` | 10⁶ | | `MiB` | 2²⁰ |
//! | `GB` | 10⁹ | | `GiB` | 2³⁰ |
//! | `TB` | 10¹² | | `TiB` | 2⁴⁰ |
//!
//! (`kB` is the SI spelling, `KB` the common one; both mean 1000 bytes.) The number may have a
//! fraction and an exponent (`1.5GiB`, `2e9B`, `1_000MB`); the size is computed exactly in decimal
//! and rounded to the nearest byte, halves up (`1.5GiB` = 1610612736 bytes, `1000.5B` = 1001).
//! `NaN`, `inf`, negative sizes, sizes past 2⁶⁴ − 1 bytes and unknown units are errors that name
//! the value.
//!
//! ```
//! use modelspec_dsl::ir::{Budget, LayerCheckpoint};
//! use modelspec_dsl::plan::{PolicyOverride, parse_budget, parse_policy};
//! assert_eq!(parse_budget("1.5GiB"), Ok(Budget::Bytes(3 << 29)));
//! assert_eq!(parse_budget("2kB"), parse_budget("2KB"));
//! assert_eq!(
//!     parse_policy("save(q, attn)"),
//!     Ok(PolicyOverride::Layer(LayerCheckpoint::Save(vec!["q".into(), "attn".into()])))
//! );
//! assert!(parse_budget("NaN").unwrap_err().to_string().contains("`NaN`"));
//! ```

use super::TensorCost;
use crate::check::did_you_mean;
use crate::ir::{Budget, LayerCheckpoint};

/// A policy that replaces the spec's own for every layer, or a global budget.
#[derive(Debug, Clone, PartialEq)]
pub enum PolicyOverride {
    /// The same per-layer policy everywhere.
    Layer(LayerCheckpoint),
    /// A global budget over the layers whose policy is `auto`.
    Budget(Budget),
}

/// The byte units a budget may carry, with their sizes (see the module docs).
pub const BYTE_UNITS: [(&str, u64); 10] = [
    ("B", 1),
    ("kB", 1_000),
    ("KB", 1_000),
    ("KiB", 1 << 10),
    ("MB", 1_000_000),
    ("MiB", 1 << 20),
    ("GB", 1_000_000_000),
    ("GiB", 1 << 30),
    ("TB", 1_000_000_000_000),
    ("TiB", 1 << 40),
];

/// The per-layer policy names.
pub const LAYER_POLICIES: [&str; 5] = ["none", "full", "auto", "save", "recompute"];

/// Why a policy or a budget does not parse. `Display` gives the message and, after `; `, the hint;
/// [`PolicyError::message`] and [`PolicyError::hint`] give them apart (for diagnostics with spans).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}", self.full())]
pub enum PolicyError {
    /// A policy name that is not one of the known ones.
    UnknownPolicy {
        /// The name as written.
        name: String,
        /// Whether `budget(...)` is allowed where it was written.
        budget_allowed: bool,
    },
    /// `name(` without the closing parenthesis.
    Unclosed {
        /// The policy as written.
        text: String,
    },
    /// `save` or `recompute` without its list.
    NeedsTensors {
        /// `save` or `recompute`.
        name: String,
    },
    /// `none`, `full` or `auto` with arguments.
    TakesNoArguments {
        /// The policy name.
        name: String,
    },
    /// A budget that is not a number (`NaN`, `inf`, `lots`).
    NotANumber {
        /// The budget as written.
        text: String,
    },
    /// A unitless budget outside `[0, 1]`.
    FractionOutOfRange {
        /// The fraction.
        value: f64,
    },
    /// A byte size below zero.
    NegativeBytes {
        /// The budget as written.
        text: String,
    },
    /// A byte size of 2⁶⁴ bytes or more.
    TooLarge {
        /// The budget as written.
        text: String,
    },
    /// A unit that is not in [`BYTE_UNITS`].
    UnknownUnit {
        /// The unit as written.
        unit: String,
        /// The budget as written.
        text: String,
    },
}

impl PolicyError {
    /// What is wrong, naming the value.
    pub fn message(&self) -> String {
        match self {
            Self::UnknownPolicy { name, .. } => format!("unknown value `{name}` for `checkpoint`"),
            Self::Unclosed { text } => format!("`{text}`: missing closing `)`"),
            Self::NeedsTensors { name } => {
                format!("`{name}` needs a list of tensors, e.g. `{name}(q, k)`")
            }
            Self::TakesNoArguments { name } => format!("`{name}` takes no arguments"),
            Self::NotANumber { text } => format!("budget `{text}` is not a number"),
            Self::FractionOutOfRange { value } => {
                format!("a budget fraction must be in [0, 1], found {value}")
            }
            Self::NegativeBytes { text } => format!("budget `{text}` is a negative byte size"),
            Self::TooLarge { text } => {
                format!("budget `{text}` is more bytes than fit in 64 bits")
            }
            Self::UnknownUnit { unit, .. } => format!("unknown unit `{unit}`"),
        }
    }

    /// How to fix it, where there is something to say.
    pub fn hint(&self) -> Option<String> {
        match self {
            Self::UnknownPolicy {
                name,
                budget_allowed,
            } => {
                let mut names = LAYER_POLICIES.to_vec();
                if *budget_allowed {
                    names.push("budget");
                }
                Some(match did_you_mean(name, &names) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => format!("expected one of {}", names.join(", ")),
                })
            }
            Self::NotANumber { .. } => Some(
                "write a fraction in [0, 1] (`0.5`) or a byte size with a unit (`24GiB`)".into(),
            ),
            Self::FractionOutOfRange { .. } => {
                Some("write a byte size with a unit (e.g. `24GiB`) for an absolute budget".into())
            }
            Self::UnknownUnit { unit, .. } => {
                let units: Vec<&str> = BYTE_UNITS.iter().map(|u| u.0).collect();
                Some(match did_you_mean(unit, &units) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => format!("units: {}", units.join(", ")),
                })
            }
            _ => None,
        }
    }

    fn full(&self) -> String {
        let message = match self {
            Self::UnknownUnit { text, .. } => format!("budget `{text}`: {}", self.message()),
            _ => self.message(),
        };
        match self.hint() {
            Some(h) => format!("{message}; {h}"),
            None => message,
        }
    }
}

/// Parse a policy as written on the command line: a per-layer policy or a global budget.
pub fn parse_policy(text: &str) -> Result<PolicyOverride, PolicyError> {
    let t = text.trim();
    let (head, args) = match t.find('(') {
        Some(open) => {
            let Some(inner) = t[open + 1..].trim_end().strip_suffix(')') else {
                return Err(PolicyError::Unclosed { text: t.into() });
            };
            (t[..open].trim(), Some(inner.trim()))
        }
        None => (t, None),
    };
    match (head, args) {
        ("budget", Some(a)) => parse_budget(a).map(PolicyOverride::Budget),
        ("budget", None) => Err(PolicyError::NotANumber { text: t.into() }),
        _ => {
            let names = args.map(|inner| {
                inner
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            });
            layer_policy(head, names)
                .map(PolicyOverride::Layer)
                .map_err(|e| match e {
                    PolicyError::UnknownPolicy { name, .. } => PolicyError::UnknownPolicy {
                        name,
                        budget_allowed: true,
                    },
                    e => e,
                })
        }
    }
}

/// A per-layer policy from its name and, for a call, its tensor names (`save(q, k)` is
/// `("save", Some([q, k]))`). The `.mspec` reader calls this with what it has tokenised.
pub fn layer_policy(
    name: &str,
    tensors: Option<Vec<String>>,
) -> Result<LayerCheckpoint, PolicyError> {
    match (name, tensors) {
        ("none", None) => Ok(LayerCheckpoint::None),
        ("full", None) => Ok(LayerCheckpoint::Full),
        ("auto", None) => Ok(LayerCheckpoint::Auto),
        ("save", Some(t)) => Ok(LayerCheckpoint::Save(t)),
        ("recompute", Some(t)) => Ok(LayerCheckpoint::Recompute(t)),
        ("save" | "recompute", None) => Err(PolicyError::NeedsTensors { name: name.into() }),
        ("none" | "full" | "auto", Some(_)) => {
            Err(PolicyError::TakesNoArguments { name: name.into() })
        }
        _ => Err(PolicyError::UnknownPolicy {
            name: name.into(),
            budget_allowed: false,
        }),
    }
}

/// Parse a budget: a fraction in `[0, 1]`, or a byte size with a unit (see the module docs).
pub fn parse_budget(text: &str) -> Result<Budget, PolicyError> {
    let t = text.trim();
    let number_len = t.trim_end_matches(|c: char| c.is_ascii_alphabetic()).len();
    let (number, unit) = (t[..number_len].trim(), &t[number_len..]);
    let Some(decimal) = Decimal::parse(number) else {
        return Err(PolicyError::NotANumber { text: t.into() });
    };
    if unit.is_empty() {
        let value: f64 = decimal
            .clean
            .parse()
            .map_err(|_| PolicyError::NotANumber { text: t.into() })?;
        if !(0.0..=1.0).contains(&value) {
            return Err(PolicyError::FractionOutOfRange { value });
        }
        return Ok(Budget::Fraction(value));
    }
    let Some(&(_, scale)) = BYTE_UNITS.iter().find(|u| u.0 == unit) else {
        return Err(PolicyError::UnknownUnit {
            unit: unit.into(),
            text: t.into(),
        });
    };
    if decimal.negative && decimal.mantissa != 0 {
        return Err(PolicyError::NegativeBytes { text: t.into() });
    }
    decimal
        .times_rounded(scale)
        .map(Budget::Bytes)
        .ok_or_else(|| PolicyError::TooLarge { text: t.into() })
}

/// A decimal number as written: `-`? digits (`.` digits)? (`e` `-`? digits)?, `_` allowed between
/// digits; its value is `mantissa · 10^exponent`, kept exact.
struct Decimal {
    negative: bool,
    mantissa: u128,
    exponent: i64,
    /// The text without underscores (for `f64` parsing).
    clean: String,
}

impl Decimal {
    fn parse(text: &str) -> Option<Decimal> {
        let clean: String = text.chars().filter(|&c| c != '_').collect();
        let (negative, rest) = match clean.strip_prefix('-') {
            Some(r) => (true, r),
            None => (false, clean.as_str()),
        };
        let (body, exp) = match rest.find(['e', 'E']) {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        let (whole, frac) = body.split_once('.').unwrap_or((body, ""));
        let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if whole.len() + frac.len() == 0 || !digits(whole) || !digits(frac) {
            return None;
        }
        let mut exponent: i64 = match exp {
            Some(e) => {
                let unsigned = e.strip_prefix(['+', '-']).unwrap_or(e);
                if unsigned.is_empty() || !digits(unsigned) {
                    return None;
                }
                e.parse::<i64>().ok()?.clamp(-10_000, 10_000)
            }
            None => 0,
        };
        let mut mantissa: u128 = 0;
        for b in whole.bytes().chain(frac.bytes()) {
            match mantissa.checked_mul(10) {
                Some(m) => mantissa = m + u128::from(b - b'0'),
                // Digits past u128's precision only shift the value.
                None => exponent += 1,
            }
        }
        exponent -= frac.len() as i64;
        Some(Decimal {
            negative,
            mantissa,
            exponent,
            clean,
        })
    }

    /// `|value| · scale`, rounded to the nearest integer (halves up), if it fits in a u64.
    fn times_rounded(&self, scale: u64) -> Option<u64> {
        let mut n = self.mantissa.checked_mul(u128::from(scale))?;
        if n == 0 {
            return Some(0);
        }
        if self.exponent >= 0 {
            for _ in 0..self.exponent {
                n = n.checked_mul(10)?;
            }
        } else {
            let mut divisor: u128 = 1;
            for _ in 0..-self.exponent {
                match divisor.checked_mul(10) {
                    Some(d) => divisor = d,
                    // 10^39 > u128::MAX ≥ n: the value rounds to 0 or 1 below.
                    None => return Some(0),
                }
            }
            n = n / divisor + u128::from(n % divisor >= divisor.div_ceil(2));
        }
        u64::try_from(n).ok()
    }
}

/// The policy's name in plans.
pub fn name(p: &LayerCheckpoint) -> String {
    match p {
        LayerCheckpoint::None => "none".into(),
        LayerCheckpoint::Full => "full".into(),
        LayerCheckpoint::Auto => "auto".into(),
        LayerCheckpoint::Save(n) => format!("save({})", n.join(", ")),
        LayerCheckpoint::Recompute(n) => format!("recompute({})", n.join(", ")),
    }
}

/// The budget's name in plans.
pub fn budget_name(b: &Budget) -> String {
    match b {
        Budget::Fraction(f) => format!("budget({f})"),
        Budget::Bytes(n) => format!("budget({n}B)"),
    }
}

/// Which tensors a fixed per-layer policy saves (never one that no backward op reads).
pub fn fixed_saves(p: &LayerCheckpoint, costs: &[TensorCost]) -> Vec<bool> {
    let own: Vec<bool> = costs
        .iter()
        .map(|t| {
            t.needed
                && match p {
                    LayerCheckpoint::None => true,
                    LayerCheckpoint::Full => false,
                    LayerCheckpoint::Auto => !t.fusible,
                    LayerCheckpoint::Save(names) => names.iter().any(|n| n == t.name),
                    LayerCheckpoint::Recompute(names) => !names.iter().any(|n| n == t.name),
                }
        })
        .collect();
    // One decision per unit over its needed members: saved when any is (a `save` clause or `auto`
    // keeping one keeps its buffer), except that a `recompute` clause naming one recomputes the unit.
    let unit_saved = |unit: &str| {
        let mut members = costs
            .iter()
            .zip(&own)
            .filter(|(t, _)| t.needed && t.unit == unit)
            .map(|(_, &k)| k);
        match p {
            LayerCheckpoint::Recompute(_) => members.all(|k| k),
            _ => members.any(|k| k),
        }
    };
    costs
        .iter()
        .map(|t| t.needed && unit_saved(t.unit))
        .collect()
}
