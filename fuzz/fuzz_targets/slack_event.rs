//! `POST /slack/events`: the verified body through the production parser, then a callback's
//! `event` the way the handler reads it once claimed. Any bytes: an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sentinel::slack::events::{self, Envelope};

fuzz_target!(|body: &[u8]| {
    if let Ok(Envelope::EventCallback(callback)) = events::parse(body) {
        let _ = events::parse_event(callback.event);
    }
});
