//! Which containers Sentinel watches: the `[monitor] container_include` and
//! `container_exclude` selectors, as values the configuration parses and the monitor applies.

use std::fmt;

/// One `[monitor] container_include` / `container_exclude` entry: `label:KEY`,
/// `label:KEY=VALUE` or `name:GLOB` (`*` any run of characters, `?` any one). Parsed when the
/// configuration is loaded, so a bad selector stops startup naming its key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum ContainerSelector {
    /// The container carries label `key` (with `value`, when given).
    Label { key: String, value: Option<String> },
    /// The container's name matches the glob.
    Name(String),
}

impl ContainerSelector {
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!("{text:?} is not a container selector ({why}); expected label:KEY, label:KEY=VALUE or name:GLOB")
        };
        if let Some(rest) = text.strip_prefix("label:") {
            let (key, value) = match rest.split_once('=') {
                Some((key, value)) => (key, Some(value.to_owned())),
                None => (rest, None),
            };
            if key.is_empty() || key.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(bad("the label key is empty or has spaces"));
            }
            Ok(ContainerSelector::Label {
                key: key.to_owned(),
                value,
            })
        } else if let Some(glob) = text.strip_prefix("name:") {
            if glob.is_empty() || glob.chars().any(char::is_control) {
                return Err(bad("the name pattern is empty"));
            }
            Ok(ContainerSelector::Name(glob.to_owned()))
        } else {
            Err(bad("it must start with label: or name:"))
        }
    }

    /// Whether a container with this name and labels is selected. `label` looks a label up
    /// by its Docker key (`sentinel.ignore`).
    pub fn matches<'a>(&self, name: &str, label: impl Fn(&str) -> Option<&'a str>) -> bool {
        match self {
            ContainerSelector::Label { key, value } => match (label(key), value) {
                (Some(found), Some(wanted)) => found == wanted,
                (Some(_), None) => true,
                (None, _) => false,
            },
            ContainerSelector::Name(glob) => glob_matches(glob, name),
        }
    }
}

impl TryFrom<String> for ContainerSelector {
    type Error = String;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        ContainerSelector::parse(&text)
    }
}

impl fmt::Display for ContainerSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ContainerSelector::Label { key, value: None } => write!(f, "label:{key}"),
            ContainerSelector::Label {
                key,
                value: Some(value),
            } => write!(f, "label:{key}={value}"),
            ContainerSelector::Name(glob) => write!(f, "name:{glob}"),
        }
    }
}

/// Which containers are watched: those matching any `include` selector (all when it is
/// empty) and no `exclude` selector. An unwatched container opens nothing, is never a fix's
/// target, and is not in the analyzers' inventory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerFilter {
    pub include: Vec<ContainerSelector>,
    pub exclude: Vec<ContainerSelector>,
}

impl ContainerFilter {
    pub fn watches<'a>(&self, name: &str, label: impl Fn(&str) -> Option<&'a str> + Copy) -> bool {
        let included =
            self.include.is_empty() || self.include.iter().any(|s| s.matches(name, label));
        included && !self.exclude.iter().any(|s| s.matches(name, label))
    }
}

/// `*` matches any run of characters (none included), `?` any one character; everything
/// else matches itself. Linear-time with backtracking to the last `*` only.
pub fn glob_matches(glob: &str, text: &str) -> bool {
    let pattern: Vec<char> = glob.chars().collect();
    let text: Vec<char> = text.chars().collect();
    let (mut p, mut t) = (0, 0);
    // Where the last `*` was, and the text position it is currently taken to end at.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == '?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((star_p, star_t)) => {
                    p = star_p + 1;
                    t = star_t + 1;
                    star = Some((star_p, star_t + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}
