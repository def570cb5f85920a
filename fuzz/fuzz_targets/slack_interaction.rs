//! `POST /slack/interactions`: the verified urlencoded body (its `payload` field, JSON)
//! through the production parser. Any bytes: an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sentinel::slack::interactions;

fuzz_target!(|body: &[u8]| {
    let _ = interactions::parse_form(body);
});
