//! The `modelspec` command-line tool.
fn main() {}
