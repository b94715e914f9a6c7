//! Parsers for numeric flags that refuse nonsense (`--lr -1`, `--clip NaN`, `--weight-decay -5`,
//! `--temperature NaN`) at the command line, with a message that says what is accepted.
//!
//! Each is a clap `value_parser`: a refused value is a usage error (exit 2) naming the flag.

/// Reads a float, refusing NaN and infinities.
fn finite(text: &str) -> Result<f64, String> {
    let v: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a number"))?;
    if !v.is_finite() {
        return Err(format!("`{text}` is not a finite number"));
    }
    Ok(v)
}

/// A finite number above 0 (learning rates).
pub fn positive_f64(text: &str) -> Result<f64, String> {
    let v = finite(text)?;
    if v <= 0.0 {
        return Err(format!("must be above 0, found {text}"));
    }
    Ok(v)
}

/// A finite number at least 0 (weight decay, clipping, a final learning rate).
pub fn non_negative_f64(text: &str) -> Result<f64, String> {
    let v = finite(text)?;
    if v < 0.0 {
        return Err(format!("must be 0 or more, found {text}"));
    }
    Ok(v)
}

/// A finite `f32` at least 0 (a sampling temperature; 0 is greedy).
pub fn non_negative_f32(text: &str) -> Result<f32, String> {
    let v = non_negative_f64(text)?;
    let narrow = v as f32;
    if !narrow.is_finite() {
        return Err(format!("`{text}` is too large"));
    }
    Ok(narrow)
}

/// An integer at least 1 (sizes and counts that cannot be zero).
pub fn at_least_one(text: &str) -> Result<u64, String> {
    let v: u64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a whole number"))?;
    if v == 0 {
        return Err("must be at least 1".into());
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonsense_is_refused_with_a_reason() {
        assert_eq!(positive_f64("3e-3"), Ok(3e-3));
        assert!(positive_f64("-1").unwrap_err().contains("above 0"));
        assert!(positive_f64("0").is_err());
        assert!(non_negative_f64("NaN").unwrap_err().contains("finite"));
        assert!(non_negative_f64("inf").is_err());
        assert!(non_negative_f64("-5").unwrap_err().contains("0 or more"));
        assert_eq!(non_negative_f64("0"), Ok(0.0));
        assert!(non_negative_f32("NaN").is_err());
        assert!(non_negative_f32("1e300").unwrap_err().contains("too large"));
        assert_eq!(non_negative_f32("0.8"), Ok(0.8));
        assert!(at_least_one("0").is_err());
        assert!(non_negative_f64("x").unwrap_err().contains("not a number"));
    }
}
