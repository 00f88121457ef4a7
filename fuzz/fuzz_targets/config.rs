//! The configuration loader: YAML, `${VAR}` expansion, validation. Never a panic, whatever the
//! file holds.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ =
        mpapi::config::Config::parse(text, &|name| (name == "SET").then(|| "value".to_string()));
});
