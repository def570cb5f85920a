//! Recent changes: which of a target container's Docker events before its incident count as
//! changes, and how to say them (SPEC §12.4).
//!
//! In: the target's name, its [`ContainerEvent`]s from `[analyzer] change_window` before the
//! incident opened (read by `runtime::docker`), and when the incident opened. Out:
//! [`Change`]s, worded for people, and the one sentence a root cause and a card lead with
//! ([`headline`]). Pure.
//!
//! A change is a create, destroy or update of a container of that name, a rename to or from
//! it, and a start from another image than the container of that name ran before (the image
//! ids compared; image references when an id is unknown). A plain restart is no change.

use crate::domain::evidence::before_words;
use crate::domain::{ActionId, Change, ChangeKind, Timestamp};
use crate::runtime::ContainerEvent;

/// `sha256:4f1c…` cut to Docker's short form, `4f1c2a9e0b7d`.
fn short_image_id(id: &str) -> &str {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    &hex[..hex.len().min(12)]
}

/// `shop/web:2.1 (4f1c2a9e0b7d)`, whatever of the two is known.
fn image_words(event: &ContainerEvent) -> String {
    match (&event.image, &event.image_id) {
        (Some(reference), Some(id))
            if reference.trim_start_matches("sha256:") != id.trim_start_matches("sha256:") =>
        {
            format!("image {reference} ({})", short_image_id(id))
        }
        (_, Some(id)) => format!("image {}", short_image_id(id)),
        (Some(reference), None) => format!("image {reference}"),
        (None, None) => "an unknown image".to_owned(),
    }
}

/// Whether two events ran different images: by id when both are known, else by reference.
fn different_images(a: &ContainerEvent, b: &ContainerEvent) -> Option<bool> {
    match (&a.image_id, &b.image_id) {
        (Some(x), Some(y)) => Some(x != y),
        _ => match (&a.image, &b.image) {
            (Some(x), Some(y)) => Some(x != y),
            _ => None,
        },
    }
}

/// The changes among `events` (oldest first) of the container named `target`, each with
/// how long before `opened_at` it happened. Events after `opened_at` are left out.
pub fn from_events(target: &str, events: &[ContainerEvent], opened_at: Timestamp) -> Vec<Change> {
    let mut changes = Vec::new();
    for (i, event) in events.iter().enumerate() {
        if event.at > opened_at {
            continue;
        }
        let ago = before_words(event.at, opened_at);
        let named = event.name == target;
        let change = |kind, what: String| Change {
            at: event.at,
            kind,
            detail: format!("{what}, {ago} before the incident opened"),
        };
        match event.action.as_str() {
            "create" if named => changes.push(change(
                ChangeKind::Create,
                format!("{target} was created from {}", image_words(event)),
            )),
            "destroy" if named => changes.push(change(
                ChangeKind::Destroy,
                format!(
                    "a container named {target} ({}, {}) was removed",
                    short_image_id(&event.id),
                    image_words(event)
                ),
            )),
            "rename" if named => changes.push(change(
                ChangeKind::Rename,
                format!(
                    "container {} was renamed to {target}",
                    event.old_name.as_deref().unwrap_or("(unknown)")
                ),
            )),
            "rename" if event.old_name.as_deref() == Some(target) => changes.push(change(
                ChangeKind::Rename,
                format!("{target} was renamed to {}", event.name),
            )),
            "update" if named => changes.push(change(
                ChangeKind::Update,
                format!("{target}'s resources were changed (docker update)"),
            )),
            "start" if named => {
                // The container that had the name before this one: the latest earlier
                // event of another container under (or renamed from) the name.
                let before = events[..i].iter().rev().find(|earlier| {
                    earlier.id != event.id
                        && (earlier.name == target || earlier.old_name.as_deref() == Some(target))
                });
                if let Some(before) = before {
                    if different_images(event, before) == Some(true) {
                        changes.push(change(
                            ChangeKind::Start,
                            format!(
                                "{target} was started from a new {}; before, it ran {}",
                                image_words(event),
                                image_words(before)
                            ),
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    changes
}

/// The sentence a root cause and a card lead with: `web-1 was recreated from a new image 4
/// min before it started failing`. `None` without changes.
pub fn headline(target: &str, changes: &[Change], opened_at: Timestamp) -> Option<String> {
    let latest = |kind: ChangeKind| changes.iter().rev().find(|c| c.kind == kind);
    let ago = |change: &Change| before_words(change.at, opened_at);
    let created = latest(ChangeKind::Create);
    let what = if let Some(start) = latest(ChangeKind::Start) {
        if created.is_some() {
            format!("{target} was recreated from a new image {}", ago(start))
        } else {
            format!("{target} was started from a new image {}", ago(start))
        }
    } else if let Some(create) = created {
        if latest(ChangeKind::Destroy).is_some() {
            format!("{target} was recreated {}", ago(create))
        } else {
            format!("{target} was created {}", ago(create))
        }
    } else if let Some(rename) = latest(ChangeKind::Rename) {
        format!("{target} was renamed {}", ago(rename))
    } else if let Some(update) = latest(ChangeKind::Update) {
        format!(
            "{target}'s resources were changed (docker update) {}",
            ago(update)
        )
    } else {
        let destroy = latest(ChangeKind::Destroy)?;
        format!("a container named {target} was removed {}", ago(destroy))
    };
    Some(format!("{what} before it started failing"))
}

/// Why a fix on a target that just changed deserves a person: `a restart could hide a bad
/// deploy`.
pub fn consequence(action: ActionId) -> &'static str {
    match action {
        ActionId::ContainerRestart => "a restart could hide a bad deploy",
        ActionId::ContainerStart => "starting it again could hide a bad deploy",
        ActionId::ContainerMemoryLimit => "raising its memory limit could hide a bad deploy",
        ActionId::SandboxCleanup | ActionId::NotifyOnly => "a fix could hide a bad deploy",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPENED: i64 = 1_795_860_000_000;

    fn event(
        minutes_before: i64,
        action: &str,
        id: &str,
        name: &str,
        image: &str,
    ) -> ContainerEvent {
        ContainerEvent {
            at: Timestamp::from_unix_millis(OPENED - minutes_before * 60_000),
            action: action.into(),
            id: id.into(),
            name: name.into(),
            old_name: None,
            image: Some(format!("shop/web:{image}")),
            image_id: Some(format!("sha256:{image}{}", "0".repeat(20))),
        }
    }

    fn opened() -> Timestamp {
        Timestamp::from_unix_millis(OPENED)
    }

    #[test]
    fn a_recreate_from_a_new_image_reads_as_one_sentence() {
        let events = [
            event(6, "destroy", "aaa111", "web-1", "1"),
            event(5, "create", "bbb222", "web-1", "2"),
            event(4, "start", "bbb222", "web-1", "2"),
        ];
        let changes = from_events("web-1", &events, opened());
        let kinds: Vec<ChangeKind> = changes.iter().map(|c| c.kind).collect();
        assert_eq!(
            kinds,
            [ChangeKind::Destroy, ChangeKind::Create, ChangeKind::Start]
        );
        assert_eq!(
            changes[2].detail,
            "web-1 was started from a new image shop/web:2 (200000000000); before, it ran \
             image shop/web:1 (100000000000), 4 min before the incident opened"
        );
        assert_eq!(
            headline("web-1", &changes, opened()).unwrap(),
            "web-1 was recreated from a new image 4 min before it started failing"
        );
    }

    #[test]
    fn a_recreate_from_the_same_image_is_a_recreate_without_a_new_image() {
        let events = [
            event(9, "destroy", "aaa111", "web-1", "1"),
            event(8, "create", "bbb222", "web-1", "1"),
            event(8, "start", "bbb222", "web-1", "1"),
        ];
        let changes = from_events("web-1", &events, opened());
        assert!(changes.iter().all(|c| c.kind != ChangeKind::Start));
        assert_eq!(
            headline("web-1", &changes, opened()).unwrap(),
            "web-1 was recreated 8 min before it started failing"
        );
    }

    #[test]
    fn restarts_other_names_and_later_events_are_no_changes() {
        let events = [
            // A restart of the same container: same id, no change.
            event(20, "start", "aaa111", "web-1", "1"),
            event(10, "start", "aaa111", "web-1", "1"),
            // web-10 shares a prefix, not the name.
            event(5, "create", "ccc333", "web-10", "3"),
            // After the incident opened.
            event(-1, "update", "aaa111", "web-1", "1"),
        ];
        assert_eq!(from_events("web-1", &events, opened()), []);
        assert_eq!(headline("web-1", &[], opened()), None);
    }

    #[test]
    fn renames_updates_and_unknown_image_ids() {
        let mut renamed = event(3, "rename", "aaa111", "web-1", "1");
        renamed.old_name = Some("web-1-blue".into());
        let mut away = event(2, "rename", "ddd444", "web-1-old", "1");
        away.old_name = Some("web-1".into());
        let update = event(1, "update", "aaa111", "web-1", "1");
        let changes = from_events("web-1", &[renamed, away, update], opened());
        assert_eq!(changes.len(), 3);
        assert!(changes[0]
            .detail
            .starts_with("container web-1-blue was renamed to web-1"));
        assert!(changes[1]
            .detail
            .starts_with("web-1 was renamed to web-1-old"));
        assert_eq!(
            headline("web-1", &changes, opened()).unwrap(),
            "web-1 was renamed 2 min before it started failing"
        );
        assert_eq!(
            headline("web-1", &changes[2..], opened()).unwrap(),
            "web-1's resources were changed (docker update) 60 s before it started failing"
        );

        // The old container is gone and its image id unknown: the references decide.
        let mut old = event(6, "destroy", "aaa111", "web-1", "1");
        old.image_id = None;
        let new = event(4, "start", "bbb222", "web-1", "2");
        let changes = from_events("web-1", &[old, new], opened());
        assert_eq!(changes[1].kind, ChangeKind::Start);
        assert!(
            changes[1]
                .detail
                .contains("before, it ran image shop/web:1,"),
            "{}",
            changes[1].detail
        );
    }

    #[test]
    fn consequences_name_the_fix() {
        assert_eq!(
            consequence(ActionId::ContainerRestart),
            "a restart could hide a bad deploy"
        );
        assert!(consequence(ActionId::ContainerMemoryLimit).contains("memory limit"));
    }
}
