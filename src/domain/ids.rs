//! Identifiers parsed at the edge: incident ids, fingerprints and resources.
//!
//! Each is a newtype whose constructor is the only way in, so code inside the crate never
//! handles an id that has not been checked for length and characters.

use std::fmt;

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::domain::Signal;

/// Why a piece of text is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind} is empty")]
    Empty { kind: &'static str },
    #[error("{kind} is longer than {max} characters")]
    TooLong { kind: &'static str, max: usize },
    #[error("{kind} contains a character that is not allowed: {ch:?}")]
    BadCharacter { kind: &'static str, ch: char },
    #[error("incident id must look like `inc-` followed by letters and digits")]
    BadIncidentId,
}

/// The id of an incident: `inc-` followed by 10 lowercase letters and digits.
///
/// Short enough to type in `/sentinel approve inc-…`, random so that ids from several
/// replicas never collide.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IncidentId(String);

impl IncidentId {
    const PREFIX: &'static str = "inc-";
    const RANDOM_LEN: usize = 10;

    /// A fresh random id.
    pub fn generate() -> Self {
        const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyz23456789";
        let mut rng = rand::rng();
        let suffix: String = (0..Self::RANDOM_LEN)
            .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
            .collect();
        IncidentId(format!("{}{suffix}", Self::PREFIX))
    }

    pub fn parse(text: &str) -> Result<Self, IdError> {
        let suffix = text
            .strip_prefix(Self::PREFIX)
            .ok_or(IdError::BadIncidentId)?;
        let well_formed = !suffix.is_empty()
            && suffix.len() <= 32
            && suffix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if well_formed {
            Ok(IncidentId(text.to_owned()))
        } else {
            Err(IdError::BadIncidentId)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for IncidentId {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        IncidentId::parse(&value)
    }
}

impl From<IncidentId> for String {
    fn from(value: IncidentId) -> Self {
        value.0
    }
}

impl fmt::Display for IncidentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks text that names something outside Sentinel (a container, a mount, a host):
/// printable, no control characters, bounded length.
fn check_name(kind: &'static str, text: &str, max: usize) -> Result<(), IdError> {
    if text.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if text.chars().count() > max {
        return Err(IdError::TooLong { kind, max });
    }
    if let Some(ch) = text.chars().find(|c| c.is_control() || c.is_whitespace()) {
        return Err(IdError::BadCharacter { kind, ch });
    }
    Ok(())
}

/// What an incident is about: `host`, a mount point, a container name, an alert's name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Resource(String);

impl Resource {
    pub const MAX_LEN: usize = 200;

    pub fn parse(text: &str) -> Result<Self, IdError> {
        check_name("resource", text, Self::MAX_LEN)?;
        Ok(Resource(text.to_owned()))
    }

    /// The resource of host-wide signals.
    pub fn host() -> Self {
        Resource("host".to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Resource {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Resource::parse(&value)
    }
}

impl From<Resource> for String {
    fn from(value: Resource) -> Self {
        value.0
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `signal:resource`, the key of deduplication: at most one open incident per fingerprint.
/// A test alert's is `test:signal:resource`, so a made-up breach and a real one of the same
/// signal and resource never share an incident (SPEC §12.2).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Fingerprint(String);

impl Fingerprint {
    /// What a test alert's fingerprint starts with.
    pub const TEST_PREFIX: &'static str = "test:";

    pub fn new(signal: Signal, resource: &Resource) -> Self {
        Fingerprint(format!("{}:{}", signal.as_str(), resource.as_str()))
    }

    /// The fingerprint of a test alert (`trigger`) of `signal` on `resource`.
    pub fn test_alert(signal: Signal, resource: &Resource) -> Self {
        Fingerprint(format!(
            "{}{}",
            Self::TEST_PREFIX,
            Fingerprint::new(signal, resource).0
        ))
    }

    /// Whether this names test alerts rather than a real breach.
    pub fn is_test_alert(&self) -> bool {
        self.0.starts_with(Self::TEST_PREFIX)
    }

    /// Parses `signal:resource` as typed by a person (`/sentinel silence host_cpu:host 1h`),
    /// or a test alert's `test:signal:resource`.
    pub fn parse(text: &str) -> Result<Self, IdError> {
        if let Some(real) = text.strip_prefix(Self::TEST_PREFIX) {
            let real = Fingerprint::parse(real)?;
            if real.is_test_alert() {
                return Err(IdError::BadCharacter {
                    kind: "fingerprint",
                    ch: ':',
                });
            }
            return Ok(Fingerprint(format!("{}{}", Self::TEST_PREFIX, real.0)));
        }
        let (signal, resource) = text.split_once(':').ok_or(IdError::BadCharacter {
            kind: "fingerprint",
            ch: ':',
        })?;
        let signal: Signal = signal.parse().map_err(|_| IdError::BadCharacter {
            kind: "fingerprint",
            ch: signal.chars().next().unwrap_or(':'),
        })?;
        Ok(Fingerprint::new(signal, &Resource::parse(resource)?))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Fingerprint {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Fingerprint::parse(&value)
    }
}

impl From<Fingerprint> for String {
    fn from(value: Fingerprint) -> Self {
        value.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_incident_ids_parse_and_differ() {
        let a = IncidentId::generate();
        let b = IncidentId::generate();
        assert_ne!(a, b);
        assert_eq!(IncidentId::parse(a.as_str()).unwrap(), a);
        assert_eq!(a.as_str().len(), 14);
    }

    #[test]
    fn malformed_incident_ids_are_refused() {
        for bad in [
            "",
            "inc-",
            "INC-abc",
            "inc-ABC",
            "inc-abc/../x",
            "inc-a b",
            "abc",
            &format!("inc-{}", "a".repeat(33)),
        ] {
            assert_eq!(
                IncidentId::parse(bad),
                Err(IdError::BadIncidentId),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn resources_refuse_control_characters_and_overlong_names() {
        assert!(Resource::parse("web-1").is_ok());
        assert!(Resource::parse("/var/lib").is_ok());
        assert!(matches!(
            Resource::parse("a\nb"),
            Err(IdError::BadCharacter { .. })
        ));
        assert!(matches!(Resource::parse(""), Err(IdError::Empty { .. })));
        assert!(matches!(
            Resource::parse(&"x".repeat(201)),
            Err(IdError::TooLong { .. })
        ));
    }

    #[test]
    fn fingerprints_round_trip_through_text() {
        let fp = Fingerprint::new(Signal::ContainerMemory, &Resource::parse("web-1").unwrap());
        assert_eq!(fp.as_str(), "container_memory:web-1");
        assert_eq!(Fingerprint::parse("container_memory:web-1").unwrap(), fp);
        assert_eq!(
            Fingerprint::parse("disk:/var/lib").unwrap().as_str(),
            "disk:/var/lib"
        );
        assert!(Fingerprint::parse("nonsense:web-1").is_err());
        assert!(Fingerprint::parse("web-1").is_err());
    }

    #[test]
    fn a_test_alert_fingerprint_differs_from_the_real_one_and_round_trips() {
        let host = Resource::host();
        let real = Fingerprint::new(Signal::HostMemory, &host);
        let test = Fingerprint::test_alert(Signal::HostMemory, &host);
        assert_eq!(test.as_str(), "test:host_memory:host");
        assert_ne!(test, real);
        assert!(test.is_test_alert() && !real.is_test_alert());
        assert_eq!(Fingerprint::parse(test.as_str()).unwrap(), test);
        assert!(Fingerprint::parse("test:test:host_memory:host").is_err());
        assert!(Fingerprint::parse("test:nonsense:host").is_err());
    }
}
