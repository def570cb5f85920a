//! Audit entries and the hash chain that makes the audit log tamper-evident.
//!
//! Each entry's `hash` is SHA-256 over the previous entry's hash and this entry's canonical
//! JSON (without the hash). Editing, removing or reordering any entry breaks every hash after
//! it, which [`verify_chain`] reports.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::domain::{IncidentId, Timestamp};

/// The hash before the first entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What happened, before the store gives it a place in the chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub at: Timestamp,
    /// `<Noun><PastVerb>`: `IncidentOpened`, `ApprovalGranted`, `ActionExecuted`, …
    pub event: String,
    /// `sentinel`, `api:<key name>` or `slack:<user id>`.
    pub actor: String,
    /// The actor's role when a person acted.
    pub role: Option<String>,
    pub incident: Option<IncidentId>,
    pub details: serde_json::Value,
}

/// A record with its place in the chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// 1 for the first entry, then consecutive.
    pub seq: u64,
    #[serde(flatten)]
    pub record: AuditRecord,
    pub prev_hash: String,
    pub hash: String,
}

impl AuditEntry {
    /// Chains `record` after an entry whose sequence number and hash are `previous`
    /// (`None` for the first entry).
    pub fn chain(previous: Option<(u64, &str)>, record: AuditRecord) -> Self {
        let (seq, prev_hash) = match previous {
            Some((seq, hash)) => (seq + 1, hash.to_owned()),
            None => (1, GENESIS_HASH.to_owned()),
        };
        let hash = entry_hash(seq, &record, &prev_hash);
        AuditEntry {
            seq,
            record,
            prev_hash,
            hash,
        }
    }
}

fn entry_hash(seq: u64, record: &AuditRecord, prev_hash: &str) -> String {
    // serde_json writes struct fields in declaration order and maps sorted (no
    // `preserve_order` feature), so this serialisation is canonical.
    let body = serde_json::to_vec(&(seq, record)).expect("audit records serialise");
    let mut hasher = Sha256::new();
    hasher.update(prev_hash.as_bytes());
    hasher.update(b"\n");
    hasher.update(&body);
    hex::encode(hasher.finalize())
}

/// Whether a list of entries, oldest first and starting at `seq` 1, is an unbroken chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainCheck {
    pub verified: bool,
    pub length: u64,
    /// The first entry that does not fit, when the chain is broken.
    pub broken_at: Option<u64>,
}

/// [`verify_chain`] one entry at a time, for a chain read page by page.
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    prev: String,
    length: u64,
    broken_at: Option<u64>,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        ChainVerifier {
            prev: GENESIS_HASH.to_owned(),
            length: 0,
            broken_at: None,
        }
    }
}

impl ChainVerifier {
    /// The next entry of the chain, oldest first.
    pub fn feed(&mut self, entry: &AuditEntry) {
        self.length += 1;
        if self.broken_at.is_some() {
            return;
        }
        let expected_seq = self.length;
        let fits = entry.seq == expected_seq
            && entry.prev_hash == self.prev
            && entry.hash == entry_hash(entry.seq, &entry.record, &entry.prev_hash);
        if fits {
            self.prev = entry.hash.clone();
        } else {
            self.broken_at = Some(expected_seq);
        }
    }

    pub fn finish(self) -> ChainCheck {
        ChainCheck {
            verified: self.broken_at.is_none(),
            length: self.length,
            broken_at: self.broken_at,
        }
    }
}

pub fn verify_chain(entries: &[AuditEntry]) -> ChainCheck {
    let mut prev = GENESIS_HASH.to_owned();
    for (index, entry) in entries.iter().enumerate() {
        let expected_seq = index as u64 + 1;
        let fits = entry.seq == expected_seq
            && entry.prev_hash == prev
            && entry.hash == entry_hash(entry.seq, &entry.record, &entry.prev_hash);
        if !fits {
            return ChainCheck {
                verified: false,
                length: entries.len() as u64,
                broken_at: Some(expected_seq),
            };
        }
        prev = entry.hash.clone();
    }
    ChainCheck {
        verified: true,
        length: entries.len() as u64,
        broken_at: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(event: &str) -> AuditRecord {
        AuditRecord {
            at: Timestamp::from_unix_millis(1),
            event: event.to_owned(),
            actor: "sentinel".to_owned(),
            role: None,
            incident: None,
            details: serde_json::json!({"b": 1, "a": [1, 2]}),
        }
    }

    fn chain_of(n: usize) -> Vec<AuditEntry> {
        let mut entries: Vec<AuditEntry> = Vec::new();
        for i in 0..n {
            let previous = entries.last().map(|e| (e.seq, e.hash.as_str()));
            let entry = AuditEntry::chain(previous, record(&format!("Event{i}")));
            entries.push(entry);
        }
        entries
    }

    #[test]
    fn an_untouched_chain_verifies() {
        let entries = chain_of(5);
        assert_eq!(entries[0].prev_hash, GENESIS_HASH);
        assert_eq!(entries[4].seq, 5);
        assert_eq!(
            verify_chain(&entries),
            ChainCheck {
                verified: true,
                length: 5,
                broken_at: None
            }
        );
        assert!(verify_chain(&[]).verified);
    }

    #[test]
    fn editing_removing_or_reordering_an_entry_is_detected() {
        let mut edited = chain_of(4);
        edited[1].record.actor = "mallory".to_owned();
        assert_eq!(verify_chain(&edited).broken_at, Some(2));

        let mut removed = chain_of(4);
        removed.remove(2);
        assert_eq!(verify_chain(&removed).broken_at, Some(3));

        let mut swapped = chain_of(4);
        swapped.swap(0, 1);
        assert_eq!(verify_chain(&swapped).broken_at, Some(1));
    }

    #[test]
    fn the_verifier_fed_one_by_one_agrees_with_verify_chain() {
        let mut removed = chain_of(5);
        removed.remove(1);
        let mut edited = chain_of(3);
        edited[2].record.event = "Edited".to_owned();
        for entries in [chain_of(0), chain_of(4), removed, edited] {
            let mut verifier = ChainVerifier::default();
            for entry in &entries {
                verifier.feed(entry);
            }
            assert_eq!(verifier.finish(), verify_chain(&entries));
        }
    }

    #[test]
    fn entries_survive_a_json_round_trip_with_the_same_hash() {
        let entries = chain_of(3);
        let json = serde_json::to_string(&entries).unwrap();
        let back: Vec<AuditEntry> = serde_json::from_str(&json).unwrap();
        assert!(verify_chain(&back).verified);
    }
}
