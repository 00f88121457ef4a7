//! Token checking: any string is refused or accepted without a panic, and only tokens the
//! signer issued are accepted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mpapi::session::token::{self, TokenSigner};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let signer = TokenSigner::new("fuzz-key-fuzz-key-fuzz-key-fuzz-key");
    assert!(!signer.verify(text) || text.len() == token::TOKEN_LEN);
    let _ = token::hash(text);
    let issued = signer.issue();
    assert!(signer.verify(&issued));
});
