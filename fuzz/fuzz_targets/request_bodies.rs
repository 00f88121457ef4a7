//! The JSON bodies of the native endpoints, through the same parser and validation the
//! endpoints use.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    mpapi::api::parse_every_body(body);
});
