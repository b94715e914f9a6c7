//! The tensor program lives in the front end (`modelspec_dsl::program`), the one encoding of a
//! block that every consumer reads; re-exported here for the executors.

pub use modelspec_dsl::program::*;
