//! Typed reads of config keys: each value read remembers its key (for diagnostics at the key's
//! line) and reports a wrong type or range there.

use super::*;

impl<'a> Cfg<'a> {
    pub(super) fn diag_at(
        &self,
        field: &str,
        span: Range<usize>,
        message: String,
        hint: Option<String>,
    ) -> Diagnostic {
        Diagnostic {
            file: self.file.to_string(),
            span,
            field: field.to_string(),
            message,
            hint,
        }
    }

    pub(super) fn error(&mut self, field: &str, message: String, hint: Option<String>) {
        let span = self.span_of(field);
        let d = self.diag_at(field, span, message, hint);
        self.diags.push(d);
    }

    /// The span of `key`'s value, or of `model_type` when the key is absent.
    pub(super) fn span_of(&self, key: &str) -> Range<usize> {
        let path: Vec<&str> = key.split('.').collect();
        let mut node = self.root;
        for part in &path {
            match node.get(part) {
                Some(m) => node = &m.value,
                None => {
                    return self
                        .root
                        .get("model_type")
                        .map_or(0..0, |m| m.value.span.clone());
                }
            }
        }
        node.span.clone()
    }

    /// The first of `keys` present with a non-null value.
    pub(super) fn find(&self, keys: &[&str]) -> Option<(&'a str, &'a JsonValue)> {
        let root: &'a JsonValue = self.root;
        for key in keys {
            if let Some(m) = root.get(key)
                && !m.value.is_null()
            {
                return Some((m.key.as_str(), &m.value));
            }
        }
        None
    }

    /// Records that IR field `ir` came from config key `key`.
    pub(super) fn origin(&mut self, ir: &str, key: &str) {
        self.origins
            .entry(ir.to_string())
            .or_insert_with(|| key.to_string());
    }

    /// A positive integer: the first present key, else `default`.
    pub(super) fn size(&mut self, ir: &str, keys: &[&str], default: u64) -> u64 {
        self.origin(ir, keys[0]);
        let Some((key, v)) = self.find(keys) else {
            return default;
        };
        self.origins.insert(ir.to_string(), key.to_string());
        match v.as_u64() {
            Ok(0) => {
                let key = key.to_string();
                self.error(
                    &key,
                    "a size must be positive, found 0".into(),
                    Some("sizes are at least 1".into()),
                );
                default
            }
            Ok(n) => n,
            Err(e) => {
                let key = key.to_string();
                let message = match &v.kind {
                    JsonKind::Number(text) if text.starts_with('-') => {
                        format!("a size must be a positive integer, found {text}")
                    }
                    _ => e.message,
                };
                self.error(&key, message, Some("sizes are positive integers".into()));
                default
            }
        }
    }

    /// An optional non-negative integer (`None` when absent or null).
    pub(super) fn opt_u64(&mut self, ir: &str, key: &str) -> Option<u64> {
        let (key, v) = self.find(&[key])?;
        self.origin(ir, key);
        match v.as_u64() {
            Ok(n) => Some(n),
            Err(e) => {
                let key = key.to_string();
                self.error(&key, e.message, None);
                None
            }
        }
    }

    pub(super) fn float(&mut self, ir: &str, keys: &[&str], default: f64) -> f64 {
        self.origin(ir, keys[0]);
        let Some((key, v)) = self.find(keys) else {
            return default;
        };
        self.origins.insert(ir.to_string(), key.to_string());
        self.float_value(key, v).unwrap_or(default)
    }

    pub(super) fn float_value(&mut self, key: &str, v: &JsonValue) -> Option<f64> {
        match v.as_f64() {
            Ok(f) => Some(f),
            Err(e) => {
                self.error(key, e.message, None);
                None
            }
        }
    }

    pub(super) fn opt_float(&mut self, ir: &str, key: &str) -> Option<f64> {
        let (key, v) = self.find(&[key])?;
        self.origin(ir, key);
        self.float_value(key, v)
    }

    pub(super) fn flag(&mut self, ir: &str, key: &str, default: bool) -> bool {
        if !ir.is_empty() {
            self.origin(ir, key);
        }
        let Some((key, v)) = self.find(&[key]) else {
            return default;
        };
        match v.as_bool() {
            Ok(b) => b,
            Err(e) => {
                let key = key.to_string();
                self.error(&key, e.message, None);
                default
            }
        }
    }

    pub(super) fn string(&mut self, ir: &str, keys: &[&str], default: &str) -> String {
        self.origin(ir, keys[0]);
        let Some((key, v)) = self.find(keys) else {
            return default.to_string();
        };
        self.origins.insert(ir.to_string(), key.to_string());
        match v.as_str() {
            Ok(s) => s.to_string(),
            Err(e) => {
                let key = key.to_string();
                self.error(&key, e.message, None);
                default.to_string()
            }
        }
    }

    /// A probability in [0, 1).
    pub(super) fn rate(&mut self, ir: &str, key: &str) -> f64 {
        let p = self.float(ir, &[key], 0.0);
        if !(0.0..1.0).contains(&p) {
            self.error(key, format!("dropout rate {p} is outside [0, 1)"), None);
            return 0.0;
        }
        p
    }
}
