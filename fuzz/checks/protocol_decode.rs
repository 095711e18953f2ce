//! The `protocol_decode` property, shared by the fuzz target
//! `fuzz/fuzz_targets/protocol_decode.rs` and the regression test
//! `crates/protocol/tests/fuzz_regressions.rs` (both include this file with `#[path]`):
//!
//! - any bytes given to `decode_call`, `decode_pre_answer` and `decode_post_answer` decode
//!   or fail with a message, never panic;
//! - whatever decodes, encoded again, decodes to the same value (a float in an event may
//!   drift by a ULP: see `json.rs`);
//! - the input read as documents to send (fields separated by the byte `0xFF`, which UTF-8
//!   never contains: method, request, body, content type, body, code, the content type of a
//!   withheld body) encodes to calls and answers that decode to themselves.

#[path = "json.rs"]
mod json;

use powerstrip_protocol::{
    ClientRequest, HookCall, ServerResponse, WithheldBody, decode_call, decode_post_answer,
    decode_pre_answer, encode_call, encode_post_answer, encode_pre_answer,
};

/// Separates the fields of the documents-to-send reading of an input.
pub const SEPARATOR: u8 = 0xFF;

/// Checks one input; panics, naming the broken property, when one does not hold.
pub fn check(data: &[u8]) {
    decoded_round_trips(data);
    encoded_round_trips(data);
}

fn decoded_round_trips(data: &[u8]) {
    match decode_call(data) {
        Ok(call) => {
            if let Some(request) = call.client_request() {
                check_request(request);
            }
            let bytes = encode_call(&call);
            let again = decode_call(&bytes).unwrap_or_else(|e| {
                panic!("{call:?} encoded as {} does not decode: {e}", lossy(&bytes))
            });
            assert!(
                again == call || json::same_text(&bytes, &encode_call(&again)),
                "a call changed through encode and decode: {call:?} became {again:?}"
            );
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    match decode_pre_answer(data) {
        Ok(request) => {
            check_request(&request);
            let bytes = encode_pre_answer(&request);
            let again = decode_pre_answer(&bytes).unwrap_or_else(|e| {
                panic!(
                    "{request:?} encoded as {} does not decode: {e}",
                    lossy(&bytes)
                )
            });
            assert!(
                again == request || json::same_text(&bytes, &encode_pre_answer(&again)),
                "a pre answer changed through encode and decode: {request:?} became {again:?}"
            );
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    match decode_post_answer(data) {
        Ok(response) => {
            let bytes = encode_post_answer(&response);
            let again = decode_post_answer(&bytes).unwrap_or_else(|e| {
                panic!(
                    "{response:?} encoded as {} does not decode: {e}",
                    lossy(&bytes)
                )
            });
            assert!(
                again == response || json::same_text(&bytes, &encode_post_answer(&again)),
                "a post answer changed through encode and decode: {response:?} became {again:?}"
            );
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

fn encoded_round_trips(data: &[u8]) {
    let mut fields = data.split(|&b| b == SEPARATOR);
    let mut next = || fields.next().map(lossy);
    let method = next().unwrap_or_default();
    let target = next().unwrap_or_default();
    let body = next();
    let content_type = next().unwrap_or_default();
    let response_body = next();
    let code = next().map_or(200, |c| {
        c.bytes()
            .fold(0u16, |n, b| n.wrapping_mul(31).wrapping_add(u16::from(b)))
    });
    let withheld = next().map(|content_type| WithheldBody {
        content_length: u64::try_from(content_type.len())
            .ok()
            .filter(|n| n % 2 == 0),
        content_type,
    });
    let mut request = ClientRequest::new(method, target, body);
    request.withheld = withheld;
    check_request(&request);
    let response = ServerResponse {
        content_type,
        body: response_body,
        code,
    };
    assert_eq!(
        decode_pre_answer(&encode_pre_answer(&request))
            .ok()
            .as_ref(),
        Some(&request),
        "an encoded pre answer does not decode to itself"
    );
    assert_eq!(
        decode_post_answer(&encode_post_answer(&response))
            .ok()
            .as_ref(),
        Some(&response),
        "an encoded post answer does not decode to itself"
    );
    for call in [
        HookCall::PreHook {
            client_request: request.clone(),
        },
        HookCall::PostHook {
            client_request: request,
            server_response: response,
        },
    ] {
        assert_eq!(
            decode_call(&encode_call(&call)).ok().as_ref(),
            Some(&call),
            "an encoded call does not decode to itself"
        );
    }
}

/// `path` and `query` split `request` at its first `?`.
fn check_request(request: &ClientRequest) {
    let path = request.path();
    match request.query() {
        Some(query) => assert_eq!(format!("{path}?{query}"), request.request),
        None => {
            assert_eq!(path, request.request);
            assert!(!path.contains('?'));
        }
    }
    assert!(!path.contains('?'), "path {path:?} holds a '?'");
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
