//! JSON equality for round-trip properties, shared by the checks that include it.
//!
//! `serde_json` without its `float_roundtrip` feature (the workspace does not enable it)
//! reads about a third of the floats it prints back one ULP off, so a float may drift by a
//! ULP or two each time a document is decoded and encoded again. Everything else must come
//! back exactly: strings, integers, `null`s, and keys in their order.

// Each check that includes this file uses only some of it.
#![allow(dead_code)]

use serde_json::{Map, Value};

/// How many ULPs a float may drift through one print-and-read.
const MAX_ULPS: u64 = 2;

/// Two JSON texts hold the same document (see the module documentation).
pub fn same_text(a: &[u8], b: &[u8]) -> bool {
    match (
        serde_json::from_slice::<Value>(a),
        serde_json::from_slice::<Value>(b),
    ) {
        (Ok(a), Ok(b)) => same(&a, &b),
        _ => false,
    }
}

/// Equal objects, keys in the same order.
pub fn same_object(a: &Map<String, Value>, b: &Map<String, Value>) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((ka, va), (kb, vb))| ka == kb && same(va, vb))
}

/// Equal values; floats within [`MAX_ULPS`].
pub fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() && y.is_f64() => {
            match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => x == y || ulps_apart(x, y) <= MAX_ULPS,
                _ => false,
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => same_object(x, y),
        _ => a == b,
    }
}

fn ulps_apart(x: f64, y: f64) -> u64 {
    if x.is_sign_negative() == y.is_sign_negative() {
        x.to_bits().abs_diff(y.to_bits())
    } else {
        u64::MAX
    }
}
