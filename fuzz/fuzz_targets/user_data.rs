//! `encryptedData` decryption (`/credentials`, legacy `/mobile`): base64 key, IV and data,
//! AES-128-CBC, padding, JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mpapi::wechat::crypto;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.splitn(3, '\n');
    let key = parts.next().unwrap_or_default();
    let iv = parts.next().unwrap_or_default();
    let encrypted = parts.next().unwrap_or_default();
    let _ = crypto::decrypt_user_data(key, encrypted, iv);
});
