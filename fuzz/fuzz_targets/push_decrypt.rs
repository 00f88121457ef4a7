//! A safe-mode push's `Encrypt` field: base64, AES-256-CBC, padding, the length prefix and the
//! appid suffix, then the plaintext's parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mpapi::wechat::crypto::PushCipher;

const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cipher) = PushCipher::new(AES_KEY) else {
        return;
    };
    // As is (mostly refused by base64), and encrypted first so the inner layers see it too.
    if let Ok(plain) = cipher.decrypt(text, "wxfuzz") {
        let _ = mpapi::messages::message::fields(&plain);
    }
    let sealed = cipher.encrypt(text, "wxfuzz");
    let opened = cipher.decrypt(&sealed, "wxfuzz");
    assert_eq!(opened.as_deref().ok(), Some(text), "round trip");
    let _ = mpapi::messages::message::fields(text);
});
