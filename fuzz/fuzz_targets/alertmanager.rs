//! `POST /api/alerts/alertmanager` and `POST /api/alerts`: any body through the JSON shapes
//! the handlers extract, then the production parsers that turn them into alert updates.
//! Any bytes: an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sentinel::web::alerts::{parse_alertmanager, parse_generic, AlertmanagerPayload, GenericAlert};

fuzz_target!(|body: &[u8]| {
    if let Ok(payload) = serde_json::from_slice::<AlertmanagerPayload>(body) {
        let _ = parse_alertmanager(&payload);
    }
    if let Ok(alert) = serde_json::from_slice::<GenericAlert>(body) {
        let _ = parse_generic(&alert);
    }
});
