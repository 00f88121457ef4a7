//! A plaintext customer-service push (XML or JSON) with a valid signature: the body reaches the
//! message parser, which must answer every input with fields or an error.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use mpapi::config::MessagesConfig;
use mpapi::messages::push::{self, PushQuery};
use mpapi::types::Secret;
use mpapi::wechat::crypto;

fuzz_target!(|body: &[u8]| {
    let config = MessagesConfig {
        token: Secret::new("fuzz-token".to_string()),
        aes_key: None,
        forward_url: None,
        forward_token: None,
        reply_token: None,
        max_age: Duration::from_secs(300),
    };
    let query = PushQuery {
        signature: crypto::push_signature("fuzz-token", "1700000000", "nonce"),
        timestamp: "1700000000".into(),
        nonce: "nonce".into(),
        ..PushQuery::default()
    };
    if let Ok(fields) = push::open(&config, "wxfuzz", &query, body) {
        let _ = mpapi::messages::message::text(&fields, "MsgType");
    }
});
