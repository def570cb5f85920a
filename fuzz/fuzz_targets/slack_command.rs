//! `POST /slack/commands`: the verified urlencoded body through the production parser, and
//! the same bytes (as UTF-8) as a command line, the way a mention's text is read. Any bytes:
//! an error or a command, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sentinel::slack::commands::{self, SlashCommand};

fuzz_target!(|body: &[u8]| {
    if let Ok((form, command)) = commands::parse_form(body) {
        assert_eq!(command, SlashCommand::parse(&form.text));
    }
    if let Ok(text) = std::str::from_utf8(body) {
        let _ = SlashCommand::parse(text);
    }
});
