//! Path resolution: an accepted path has no dot segment left (plain or percent-encoded) and
//! stays under `/app`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(resolved) = mpapi::gateway::path::resolve(path) {
        assert!(
            resolved == "/app" || resolved.starts_with("/app/"),
            "{path:?} resolved outside the prefix: {resolved:?}"
        );
        for segment in resolved.split('/') {
            let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
            assert!(
                decoded != "." && decoded != "..",
                "{path:?} kept a dot segment: {resolved:?}"
            );
        }
    }
});
