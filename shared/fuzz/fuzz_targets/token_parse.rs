//! Any text fed to the token parser is refused or parsed into a token that prints back
//! as the same (trimmed) text; never a panic.
#![no_main]

use dynserv_shared::token::EnrollmentToken;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(token) = EnrollmentToken::parse(text) {
            assert_eq!(token.to_string(), text.trim());
            assert_eq!(EnrollmentToken::parse(&token.to_string()), Ok(token));
        }
    }
});
