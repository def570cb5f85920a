//! The store conformance suite: every test body below is one generic `async fn` over
//! `Arc<dyn Store>`, and [`conformance!`] runs each of them against both backends, redb in a
//! fresh temporary directory (`store::embedded::*`) and the real redis-server under a fresh
//! key prefix (`store::redis::*`). A behaviour the two disagree on fails here.
//!
//! Time-based behaviour (idempotency keys, leases) uses short real TTLs, real sleeps and
//! `Timestamp::now()`, because Redis expires keys on its own clock while redb compares
//! against the `now` it is given: only real time is the same for both.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use sentinel::domain::{
    verify_chain, ActionId, AuditRecord, ChainCheck, Detection, Fingerprint, Incident, IncidentId,
    ProposedAction, Resource, Risk, Severity, Signal, Silence, SilenceTarget, Source, Status,
    TimelineEntry, Timestamp, GENESIS_HASH,
};
use sentinel::pipeline::intake::{open_or_update, Intake};
use sentinel::store::{Control, IncidentQuery, SharedStore, StoreError};
use serde_json::json;
use tokio::sync::Barrier;

/// Generates, for each named test body, one `#[tokio::test]` per backend.
macro_rules! conformance {
    ($($name:ident),+ $(,)?) => {
        /// The suite on the embedded store (redb in a fresh temporary directory).
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let (store, _dir) = crate::helpers::embedded_store();
                    super::$name(std::sync::Arc::new(store)).await;
                }
            )+
        }

        /// The suite on the Redis store (the real redis-server, a fresh key prefix).
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let store = crate::helpers::redis_store().await;
                    super::$name(std::sync::Arc::new(store)).await;
                }
            )+
        }
    };
}

conformance!(
    automatic_actions_are_counted_per_key_within_a_window,
    an_incident_reads_back_exactly_as_written,
    a_closed_incident_never_claims_its_fingerprint,
    incidents_list_newest_first_with_limit_and_open_only,
    updates_are_compare_and_set_on_the_version,
    concurrent_updates_from_one_read_let_exactly_one_win,
    a_fingerprint_has_at_most_one_open_incident,
    concurrent_creates_of_one_fingerprint_open_exactly_one,
    timeline_appends_bump_the_version_and_none_are_lost,
    intake_opens_once_then_updates_the_open_incident,
    intake_respects_active_silences_only,
    audit_entries_form_a_verified_chain_in_order,
    concurrent_audit_appends_leave_no_gaps,
    claim_once_holds_a_key_for_its_ttl,
    remembered_members_last_until_their_date_and_sets_stay_apart,
    concurrent_claims_of_one_key_succeed_once,
    silences_list_while_active_and_expire_once,
    concurrent_expiries_of_one_silence_end_it_once,
    leases_fence_out_a_previous_holder,
    control_flags_default_to_running_and_round_trip,
    outbox_queues_are_first_in_first_out_per_channel,
    outbox_parks_a_message_with_its_error_atomically,
    concurrent_outbox_pushes_keep_every_message_in_one_order,
    a_marked_push_queues_only_while_the_mark_is_as_read,
    concurrent_marked_pushes_from_one_read_queue_once,
    an_incident_keeps_its_slack_card,
    sightings_count_without_bumping_the_version,
    concurrent_pauses_change_the_flag_once,
    trust_runs_count_verified_fixes_and_a_break_ends_run_and_grant,
    trust_is_granted_only_when_earned_and_once_per_pair,
    concurrent_trust_grants_of_one_pair_store_exactly_one,
);

// ---------------------------------------------------------------------------------------------
// Building blocks

/// A fixed instant (2026-11-28T10:00:00Z) for tests that choose their own clock.
fn t(offset_ms: i64) -> Timestamp {
    Timestamp::from_unix_millis(1_795_860_000_000 + offset_ms)
}

fn detection(signal: Signal, resource: &str) -> Detection {
    Detection {
        signal,
        resource: Resource::parse(resource).unwrap(),
        severity: Severity::Warning,
        value: 72.5,
        threshold: 60.0,
        source: Source::Local,
        summary: format!("{signal} on {resource} is 72.5 (threshold 60)"),
        labels: BTreeMap::from([("team".to_owned(), "sre".to_owned())]),
    }
}

fn fingerprint(signal: Signal, resource: &str) -> Fingerprint {
    Fingerprint::new(signal, &Resource::parse(resource).unwrap())
}

/// A new, open `container_memory` incident of `resource`, opened at `at`.
fn incident_at(resource: &str, at: Timestamp) -> Incident {
    Incident::open(
        IncidentId::generate(),
        &detection(Signal::ContainerMemory, resource),
        at,
    )
}

fn incident(resource: &str) -> Incident {
    incident_at(resource, Timestamp::now())
}

fn resolved(mut incident: Incident) -> Incident {
    incident
        .transition(Status::Resolved, "sentinel", "recovered", Timestamp::now())
        .unwrap();
    incident
}

fn ids(incidents: &[Incident]) -> Vec<&str> {
    incidents.iter().map(|i| i.id.as_str()).collect()
}

fn query(open_only: bool, limit: usize) -> IncidentQuery {
    IncidentQuery { open_only, limit }
}

fn silence(id: &str, target: SilenceTarget, created_at: Timestamp, ends_at: Timestamp) -> Silence {
    Silence {
        id: id.to_owned(),
        target,
        created_by: "slack:U0TEST".to_owned(),
        created_at,
        ends_at,
        reason: format!("test silence {id}"),
    }
}

fn audit_record(n: usize) -> AuditRecord {
    AuditRecord {
        at: t(n as i64),
        event: "TestEventRecorded".to_owned(),
        actor: "api:conformance".to_owned(),
        role: Some("admin".to_owned()),
        incident: None,
        details: serde_json::json!({ "n": n, "nested": { "b": [1, 2], "a": "x" } }),
    }
}

/// Spawns `n` tasks that each wait at a common barrier, then run `work(i)`; returns the
/// results in task order.
async fn race<T, F, Fut>(n: usize, work: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let barrier = Arc::new(Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let barrier = Arc::clone(&barrier);
            let job = work(i);
            tokio::spawn(async move {
                barrier.wait().await;
                job.await
            })
        })
        .collect();
    let mut results = Vec::with_capacity(n);
    for task in tasks {
        results.push(task.await.expect("a racing task panicked"));
    }
    results
}

// ---------------------------------------------------------------------------------------------
// Incidents

async fn an_incident_reads_back_exactly_as_written(store: SharedStore) {
    store.ping().await.expect("the store answers");
    let mut written = incident("roundtrip-web");
    // Fill every optional field so a lossy encoding of any of them shows.
    written.risk = Some(Risk::Medium);
    written.proposed_action = Some(ProposedAction {
        action: ActionId::ContainerRestart,
        params: BTreeMap::from([("container".to_owned(), serde_json::json!("roundtrip-web"))]),
    });
    written.root_cause = Some("a leak in the image cache — ünïcode too".to_owned());
    written.confidence = Some(0.8125);
    written.analyzer = Some("rules".to_owned());
    written.record("observed", "sentinel", "seen again", written.opened_at);

    store.create_incident(&written).await.unwrap();
    let read = store.get_incident(&written.id).await.unwrap();
    assert_eq!(read.as_ref(), Some(&written));

    let unknown = IncidentId::generate();
    assert_eq!(store.get_incident(&unknown).await.unwrap(), None);

    // The same id cannot be created twice, even once its fingerprint is free again.
    let closed = store
        .update_incident(&resolved(written.clone()))
        .await
        .unwrap();
    match store.create_incident(&written).await {
        Err(StoreError::AlreadyExists(id)) => assert_eq!(id, written.id),
        other => panic!("re-creating {} gave {other:?}", written.id),
    }
    assert_eq!(store.get_incident(&written.id).await.unwrap(), Some(closed));
}

async fn a_closed_incident_never_claims_its_fingerprint(store: SharedStore) {
    let open = incident("closed-web");
    store.create_incident(&open).await.unwrap();

    // A closed incident (e.g. imported history) with the same fingerprint is stored and
    // does not take the fingerprint from the open one.
    let history = resolved(incident("closed-web"));
    store.create_incident(&history).await.unwrap();
    assert_eq!(
        store.get_incident(&history.id).await.unwrap(),
        Some(history.clone())
    );
    assert_eq!(
        store.open_incident_for(&open.fingerprint).await.unwrap(),
        Some(open.clone())
    );
    let open_list = store.list_incidents(query(true, 10)).await.unwrap();
    assert_eq!(ids(&open_list), [open.id.as_str()]);

    // Resolving the open one frees the fingerprint: the closed one never held it.
    store.update_incident(&resolved(open)).await.unwrap();
    assert_eq!(
        store.open_incident_for(&history.fingerprint).await.unwrap(),
        None
    );
}

async fn incidents_list_newest_first_with_limit_and_open_only(store: SharedStore) {
    let a = incident_at("list-a", t(1_000));
    let b = incident_at("list-b", t(3_000));
    let c = incident_at("list-c", t(2_000));
    // Two opened in the same millisecond: the larger id comes first.
    let tie_low = Incident::open(
        IncidentId::parse("inc-tiea").unwrap(),
        &detection(Signal::HostCpu, "list-tie-1"),
        t(4_000),
    );
    let tie_high = Incident::open(
        IncidentId::parse("inc-tieb").unwrap(),
        &detection(Signal::HostCpu, "list-tie-2"),
        t(4_000),
    );
    // Written in an order unrelated to the expected one.
    for incident in [&c, &tie_high, &a, &tie_low, &b] {
        store.create_incident(incident).await.unwrap();
    }

    let all = store.list_incidents(query(false, 100)).await.unwrap();
    assert_eq!(
        all,
        vec![
            tie_high.clone(),
            tie_low.clone(),
            b.clone(),
            c.clone(),
            a.clone()
        ]
    );
    let first_two = store.list_incidents(query(false, 2)).await.unwrap();
    assert_eq!(ids(&first_two), ["inc-tieb", "inc-tiea"]);
    assert!(store
        .list_incidents(query(false, 0))
        .await
        .unwrap()
        .is_empty());

    // Resolve b: it stays in the full list (with its new version) but leaves the open one.
    let b_resolved = store.update_incident(&resolved(b.clone())).await.unwrap();
    let all = store.list_incidents(query(false, 100)).await.unwrap();
    assert_eq!(all[2], b_resolved);
    assert_eq!(
        ids(&all),
        [
            tie_high.id.as_str(),
            tie_low.id.as_str(),
            b.id.as_str(),
            c.id.as_str(),
            a.id.as_str()
        ]
    );
    let open = store.list_incidents(query(true, 100)).await.unwrap();
    assert_eq!(
        open,
        vec![tie_high.clone(), tie_low.clone(), c.clone(), a.clone()]
    );
    assert!(open.iter().all(Incident::is_open));
    let open_three = store.list_incidents(query(true, 3)).await.unwrap();
    assert_eq!(
        ids(&open_three),
        [tie_high.id.as_str(), tie_low.id.as_str(), c.id.as_str()]
    );
    assert!(store
        .list_incidents(query(true, 0))
        .await
        .unwrap()
        .is_empty());
}

async fn updates_are_compare_and_set_on_the_version(store: SharedStore) {
    let created = incident("cas-web");
    store.create_incident(&created).await.unwrap();
    let read = store.get_incident(&created.id).await.unwrap().unwrap();
    assert_eq!(read.version, 1);

    let mut next = read.clone();
    next.transition(Status::Analyzing, "sentinel", "analyzing", Timestamp::now())
        .unwrap();
    let stored = store.update_incident(&next).await.unwrap();
    assert_eq!(stored.version, read.version + 1, "exactly one version bump");
    let mut expected = next.clone();
    expected.version += 1;
    assert_eq!(stored, expected, "the update stores what it was given");
    assert_eq!(
        store.get_incident(&created.id).await.unwrap(),
        Some(stored.clone())
    );

    // A writer still holding version 1 is refused and changes nothing.
    let mut stale = read.clone();
    stale.root_cause = Some("written from a stale read".to_owned());
    match store.update_incident(&stale).await {
        Err(StoreError::VersionConflict {
            id,
            expected,
            found,
        }) => {
            assert_eq!(id, created.id);
            assert_eq!((expected, found), (1, 2));
        }
        other => panic!("a stale update gave {other:?}"),
    }
    assert_eq!(
        store.get_incident(&created.id).await.unwrap(),
        Some(stored.clone())
    );

    // The next write from the current version goes through again.
    let mut again = stored.clone();
    again.root_cause = Some("written from the current version".to_owned());
    assert_eq!(store.update_incident(&again).await.unwrap().version, 3);

    // Updating an incident that was never created is NotFound and creates nothing.
    let ghost = incident("cas-ghost");
    match store.update_incident(&ghost).await {
        Err(StoreError::NotFound(id)) => assert_eq!(id, ghost.id),
        other => panic!("updating an unknown incident gave {other:?}"),
    }
    assert_eq!(store.get_incident(&ghost.id).await.unwrap(), None);
    assert_eq!(
        store.open_incident_for(&ghost.fingerprint).await.unwrap(),
        None
    );
}

async fn concurrent_updates_from_one_read_let_exactly_one_win(store: SharedStore) {
    let created = incident("cas-race");
    store.create_incident(&created).await.unwrap();
    let read = store.get_incident(&created.id).await.unwrap().unwrap();

    let results = race(10, |i| {
        let store = Arc::clone(&store);
        let mut next = read.clone();
        next.root_cause = Some(format!("writer {i}"));
        async move { store.update_incident(&next).await }
    })
    .await;

    let mut winners = Vec::new();
    for (i, result) in results.into_iter().enumerate() {
        match result {
            Ok(stored) => winners.push((i, stored)),
            Err(StoreError::VersionConflict {
                expected, found, ..
            }) => assert_eq!((expected, found), (1, 2), "writer {i}"),
            Err(other) => panic!("writer {i}: {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one writer wins: {winners:?}");
    let (winner, stored) = &winners[0];
    assert_eq!(stored.version, 2);
    let current = store.get_incident(&created.id).await.unwrap().unwrap();
    assert_eq!(&current, stored);
    assert_eq!(current.root_cause, Some(format!("writer {winner}")));
}

async fn a_fingerprint_has_at_most_one_open_incident(store: SharedStore) {
    let first = incident("dedup-web");
    store.create_incident(&first).await.unwrap();
    assert_eq!(
        store.open_incident_for(&first.fingerprint).await.unwrap(),
        Some(first.clone())
    );
    let other = fingerprint(Signal::ContainerMemory, "dedup-other");
    assert_eq!(store.open_incident_for(&other).await.unwrap(), None);

    // A second open incident of the same fingerprint is refused, naming the first.
    let second = incident("dedup-web");
    match store.create_incident(&second).await {
        Err(StoreError::DuplicateOpen {
            fingerprint,
            existing,
        }) => {
            assert_eq!(fingerprint, first.fingerprint);
            assert_eq!(existing, first.id);
        }
        other => panic!("a duplicate create gave {other:?}"),
    }
    assert_eq!(store.get_incident(&second.id).await.unwrap(), None);

    // Staying open through an update keeps the claim.
    let mut analyzing = first.clone();
    analyzing
        .transition(Status::Analyzing, "sentinel", "analyzing", Timestamp::now())
        .unwrap();
    let analyzing = store.update_incident(&analyzing).await.unwrap();
    assert_eq!(
        store.open_incident_for(&first.fingerprint).await.unwrap(),
        Some(analyzing.clone())
    );

    // Resolving frees the fingerprint.
    let first_resolved = store.update_incident(&resolved(analyzing)).await.unwrap();
    assert_eq!(first_resolved.status, Status::Resolved);
    assert_eq!(
        store.open_incident_for(&first.fingerprint).await.unwrap(),
        None
    );

    // So a new incident can open.
    store.create_incident(&second).await.unwrap();
    assert_eq!(
        store.open_incident_for(&first.fingerprint).await.unwrap(),
        Some(second.clone())
    );

    // Reopening the old one (a rollback) while the new one is open is refused.
    let mut reopened = first_resolved.clone();
    reopened
        .transition(
            Status::RolledBack,
            "api:admin",
            "rolled back",
            Timestamp::now(),
        )
        .unwrap();
    match store.update_incident(&reopened).await {
        Err(StoreError::DuplicateOpen {
            fingerprint,
            existing,
        }) => {
            assert_eq!(fingerprint, first.fingerprint);
            assert_eq!(existing, second.id);
        }
        other => panic!("reopening over an open incident gave {other:?}"),
    }
    assert_eq!(
        store.get_incident(&first.id).await.unwrap(),
        Some(first_resolved.clone()),
        "a refused reopen changes nothing"
    );
    assert_eq!(
        store.open_incident_for(&first.fingerprint).await.unwrap(),
        Some(second.clone())
    );

    // Once the new one resolves, the old one may reopen and claims the fingerprint again.
    store.update_incident(&resolved(second)).await.unwrap();
    let reopened = store.update_incident(&reopened).await.unwrap();
    assert_eq!(reopened.status, Status::RolledBack);
    assert_eq!(
        store.open_incident_for(&first.fingerprint).await.unwrap(),
        Some(reopened)
    );
}

async fn concurrent_creates_of_one_fingerprint_open_exactly_one(store: SharedStore) {
    let candidates: Vec<Incident> = (0..8).map(|_| incident("dedup-race")).collect();
    let results = race(candidates.len(), |i| {
        let store = Arc::clone(&store);
        let candidate = candidates[i].clone();
        async move { store.create_incident(&candidate).await }
    })
    .await;

    let winners: Vec<usize> = (0..results.len()).filter(|&i| results[i].is_ok()).collect();
    assert_eq!(winners.len(), 1, "exactly one create wins: {results:?}");
    let winner = &candidates[winners[0]];
    for (i, result) in results.into_iter().enumerate() {
        match result {
            Ok(()) => {}
            Err(StoreError::DuplicateOpen {
                fingerprint,
                existing,
            }) => {
                assert_eq!(fingerprint, winner.fingerprint);
                assert_eq!(existing, winner.id, "loser {i} names the winner");
                assert_eq!(store.get_incident(&candidates[i].id).await.unwrap(), None);
            }
            Err(other) => panic!("create {i}: {other:?}"),
        }
    }
    assert_eq!(
        store.open_incident_for(&winner.fingerprint).await.unwrap(),
        Some(winner.clone())
    );
    let all = store.list_incidents(query(false, 100)).await.unwrap();
    assert_eq!(all, vec![winner.clone()]);
}

async fn timeline_appends_bump_the_version_and_none_are_lost(store: SharedStore) {
    let created = incident("timeline-web");
    store.create_incident(&created).await.unwrap();

    let entry = TimelineEntry {
        at: Timestamp::now(),
        step: "observed".to_owned(),
        actor: "sentinel".to_owned(),
        message: "seen again".to_owned(),
    };
    let updated = store
        .append_timeline(&created.id, entry.clone())
        .await
        .unwrap();
    assert_eq!(updated.version, 2);
    assert_eq!(updated.timeline.len(), 2);
    assert_eq!(updated.timeline[0], created.timeline[0]);
    assert_eq!(updated.timeline[1], entry);
    assert_eq!(updated.updated_at, entry.at);
    assert_eq!(
        store.get_incident(&created.id).await.unwrap(),
        Some(updated.clone())
    );

    // Ten appends at once: the compare-and-set retries until every one has landed.
    let results = race(10, |i| {
        let store = Arc::clone(&store);
        let id = created.id.clone();
        let entry = TimelineEntry {
            at: Timestamp::now(),
            step: "note".to_owned(),
            actor: format!("api:writer-{i}"),
            message: format!("note {i}"),
        };
        async move { store.append_timeline(&id, entry).await }
    })
    .await;
    for (i, result) in results.iter().enumerate() {
        assert!(result.is_ok(), "append {i}: {result:?}");
    }
    let versions: BTreeSet<u64> = results
        .iter()
        .map(|r| r.as_ref().unwrap().version)
        .collect();
    assert_eq!(
        versions,
        (3..=12).collect(),
        "each append got its own version"
    );

    let last = store.get_incident(&created.id).await.unwrap().unwrap();
    assert_eq!(last.version, 12);
    assert_eq!(last.timeline.len(), 12);
    assert_eq!(&last.timeline[..2], &updated.timeline[..]);
    let notes: BTreeSet<&str> = last.timeline[2..]
        .iter()
        .map(|e| e.message.as_str())
        .collect();
    let expected: BTreeSet<String> = (0..10).map(|i| format!("note {i}")).collect();
    assert_eq!(
        notes,
        expected.iter().map(String::as_str).collect::<BTreeSet<_>>()
    );

    let unknown = IncidentId::generate();
    match store.append_timeline(&unknown, entry).await {
        Err(StoreError::NotFound(id)) => assert_eq!(id, unknown),
        other => panic!("appending to an unknown incident gave {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Intake on the store

async fn intake_opens_once_then_updates_the_open_incident(store: SharedStore) {
    let first_seen = detection(Signal::HostCpu, "intake-web");
    let t0 = Timestamp::now();
    let opened = match open_or_update(store.as_ref(), &first_seen, t0)
        .await
        .unwrap()
    {
        Intake::Opened(incident) => incident,
        other => panic!("the first detection should open an incident, got {other:?}"),
    };
    assert_eq!(opened.fingerprint, first_seen.fingerprint());
    assert_eq!(opened.status, Status::Detected);
    assert_eq!((opened.version, opened.occurrences), (1, 1));
    assert_eq!(
        store.get_incident(&opened.id).await.unwrap(),
        Some(opened.clone())
    );

    let mut seen_again = first_seen.clone();
    seen_again.value = 91.0;
    let t1 = t0.saturating_add(Duration::from_secs(30));
    let updated = match open_or_update(store.as_ref(), &seen_again, t1)
        .await
        .unwrap()
    {
        Intake::Updated(incident) => incident,
        other => panic!("a repeat should update the open incident, got {other:?}"),
    };
    assert_eq!(updated.id, opened.id);
    // A repeat is an observation: counted, never a new version (SPEC §12.1).
    assert_eq!((updated.version, updated.occurrences), (1, 2));
    assert_eq!(updated.value, 91.0);
    assert_eq!(updated.last_seen_at, t1);
    assert_eq!(
        store
            .open_incident_for(&first_seen.fingerprint())
            .await
            .unwrap(),
        Some(updated.clone())
    );
    let all = store.list_incidents(query(false, 100)).await.unwrap();
    assert_eq!(all, vec![updated], "no duplicate incident");

    // Only the opening is audited, once.
    let audit = store.list_audit().await.unwrap();
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0].record.event, "IncidentOpened");
    assert_eq!(audit[0].record.actor, "sentinel");
    assert_eq!(audit[0].record.incident.as_ref(), Some(&opened.id));
    assert!(verify_chain(&audit).verified);
}

async fn intake_respects_active_silences_only(store: SharedStore) {
    let now = Timestamp::now();
    let hour = Duration::from_secs(3600);
    let an_hour_ago = Timestamp::from_unix_millis(now.unix_millis() - 3_600_000);
    let a_minute_ago = Timestamp::from_unix_millis(now.unix_millis() - 60_000);

    let by_fingerprint = silence(
        "sil-fingerprint",
        SilenceTarget::Fingerprint(fingerprint(Signal::HostCpu, "silenced-web")),
        now,
        now.saturating_add(hour),
    );
    let by_resource = silence(
        "sil-resource",
        SilenceTarget::Resource("quiet-db".to_owned()),
        now,
        now.saturating_add(hour),
    );
    let expired = silence(
        "sil-expired",
        SilenceTarget::Fingerprint(fingerprint(Signal::HostCpu, "expired-api")),
        an_hour_ago,
        a_minute_ago,
    );
    for s in [&by_fingerprint, &by_resource, &expired] {
        store.add_silence(s).await.unwrap();
    }

    // A fingerprint silence suppresses that fingerprint only.
    let cpu = detection(Signal::HostCpu, "silenced-web");
    match open_or_update(store.as_ref(), &cpu, now).await.unwrap() {
        Intake::Silenced(s) => assert_eq!(s, by_fingerprint),
        other => panic!("a silenced fingerprint opened {other:?}"),
    }
    assert_eq!(
        store.open_incident_for(&cpu.fingerprint()).await.unwrap(),
        None
    );
    let memory = detection(Signal::HostMemory, "silenced-web");
    let memory_incident = match open_or_update(store.as_ref(), &memory, now).await.unwrap() {
        Intake::Opened(incident) => incident,
        other => panic!("another signal of the resource should open, got {other:?}"),
    };

    // A resource silence suppresses every signal of the resource.
    for signal in [Signal::Disk, Signal::ContainerDown] {
        let d = detection(signal, "quiet-db");
        match open_or_update(store.as_ref(), &d, now).await.unwrap() {
            Intake::Silenced(s) => assert_eq!(s, by_resource),
            other => panic!("{signal} on a silenced resource opened {other:?}"),
        }
        assert_eq!(
            store.open_incident_for(&d.fingerprint()).await.unwrap(),
            None
        );
    }

    // An expired silence suppresses nothing.
    let expired_cpu = detection(Signal::HostCpu, "expired-api");
    let expired_incident = match open_or_update(store.as_ref(), &expired_cpu, now)
        .await
        .unwrap()
    {
        Intake::Opened(incident) => incident,
        other => panic!("an expired silence still suppressed: {other:?}"),
    };

    // A silence added while an incident is open does not hide its repeats.
    store
        .add_silence(&silence(
            "sil-late",
            SilenceTarget::Fingerprint(memory.fingerprint()),
            now,
            now.saturating_add(hour),
        ))
        .await
        .unwrap();
    match open_or_update(store.as_ref(), &memory, now).await.unwrap() {
        Intake::Updated(incident) => {
            assert_eq!(incident.id, memory_incident.id);
            assert_eq!(incident.occurrences, 2);
        }
        other => panic!("a repeat of an open incident gave {other:?}"),
    }

    let mut opened: Vec<String> = store
        .list_incidents(query(false, 100))
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id.to_string())
        .collect();
    opened.sort();
    let mut expected = vec![
        memory_incident.id.to_string(),
        expired_incident.id.to_string(),
    ];
    expected.sort();
    assert_eq!(opened, expected, "only the unsilenced detections opened");
    assert_eq!(store.list_audit().await.unwrap().len(), 2);
}

// ---------------------------------------------------------------------------------------------
// Audit

async fn audit_entries_form_a_verified_chain_in_order(store: SharedStore) {
    assert!(store.list_audit().await.unwrap().is_empty());
    assert!(verify_chain(&[]).verified);

    let mut appended = Vec::new();
    for n in 0..5 {
        let entry = store.append_audit(audit_record(n)).await.unwrap();
        assert_eq!(entry.seq, n as u64 + 1);
        assert_eq!(entry.record, audit_record(n));
        appended.push(entry);
    }
    let listed = store.list_audit().await.unwrap();
    assert_eq!(listed, appended, "listed oldest first, exactly as appended");
    assert_eq!(listed[0].prev_hash, GENESIS_HASH);
    for pair in listed.windows(2) {
        assert_eq!(pair[1].prev_hash, pair[0].hash);
    }
    assert_eq!(
        verify_chain(&listed),
        ChainCheck {
            verified: true,
            length: 5,
            broken_at: None
        }
    );
}

async fn concurrent_audit_appends_leave_no_gaps(store: SharedStore) {
    let results = race(20, |n| {
        let store = Arc::clone(&store);
        async move { store.append_audit(audit_record(n)).await }
    })
    .await;
    let appended: Vec<_> = results
        .into_iter()
        .enumerate()
        .map(|(n, r)| r.unwrap_or_else(|e| panic!("append {n}: {e}")))
        .collect();

    let listed = store.list_audit().await.unwrap();
    let seqs: Vec<u64> = listed.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=20).collect::<Vec<u64>>(), "no gaps, no repeats");
    assert_eq!(
        verify_chain(&listed),
        ChainCheck {
            verified: true,
            length: 20,
            broken_at: None
        }
    );
    // What each append returned is exactly what was stored at its place.
    for entry in &appended {
        assert_eq!(&listed[entry.seq as usize - 1], entry);
    }
    let records: BTreeSet<u64> = listed
        .iter()
        .map(|e| e.record.details["n"].as_u64().unwrap())
        .collect();
    assert_eq!(records, (0..20).collect());
}

// ---------------------------------------------------------------------------------------------
// Idempotency keys

async fn remembered_members_last_until_their_date_and_sets_stay_apart(store: SharedStore) {
    let now = Timestamp::now();
    let later = |ms: i64| Timestamp::from_unix_millis(now.unix_millis() + ms);
    assert!(store.remembered("home", now).await.unwrap().is_empty());
    store.remember("home", "U2", later(60_000)).await.unwrap();
    store.remember("home", "U1", later(60_000)).await.unwrap();
    store.remember("home", "U3", later(300)).await.unwrap();
    store.remember("other", "U9", later(60_000)).await.unwrap();
    assert_eq!(
        store.remembered("home", now).await.unwrap(),
        ["U1", "U2", "U3"],
        "sorted, this set only"
    );
    assert_eq!(store.remembered("other", now).await.unwrap(), ["U9"]);
    // Remembered again: the new date counts, the member is not listed twice.
    store.remember("home", "U1", later(120_000)).await.unwrap();
    assert_eq!(
        store.remembered("home", later(90_000)).await.unwrap(),
        ["U1"]
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        store.remembered("home", Timestamp::now()).await.unwrap(),
        ["U1", "U2"],
        "U3's date passed"
    );
    // A write forgets the expired members for good.
    store.remember("home", "U4", later(60_000)).await.unwrap();
    assert_eq!(
        store.remembered("home", now).await.unwrap(),
        ["U1", "U2", "U4"],
        "read at the old time, U3 is gone: it was removed"
    );
}

async fn claim_once_holds_a_key_for_its_ttl(store: SharedStore) {
    let short = Duration::from_millis(800);
    let long = Duration::from_secs(60);
    assert!(store
        .claim_once("evt-short", short, Timestamp::now())
        .await
        .unwrap());
    assert!(store
        .claim_once("evt-long", long, Timestamp::now())
        .await
        .unwrap());
    assert!(
        !store
            .claim_once("evt-short", short, Timestamp::now())
            .await
            .unwrap(),
        "a live claim is not granted twice"
    );
    assert!(!store
        .claim_once("evt-long", long, Timestamp::now())
        .await
        .unwrap());
    assert!(store
        .claim_once("evt-other", short, Timestamp::now())
        .await
        .unwrap());

    tokio::time::sleep(Duration::from_millis(1_300)).await;
    assert!(
        store
            .claim_once("evt-short", short, Timestamp::now())
            .await
            .unwrap(),
        "an expired claim can be made again"
    );
    assert!(!store
        .claim_once("evt-short", short, Timestamp::now())
        .await
        .unwrap());
    assert!(
        !store
            .claim_once("evt-long", long, Timestamp::now())
            .await
            .unwrap(),
        "a claim lives for its own ttl"
    );
}

async fn concurrent_claims_of_one_key_succeed_once(store: SharedStore) {
    let results = race(10, |_| {
        let store = Arc::clone(&store);
        async move {
            store
                .claim_once("evt-race", Duration::from_secs(60), Timestamp::now())
                .await
        }
    })
    .await;
    let granted = results.iter().filter(|r| matches!(r, Ok(true))).count();
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(granted, 1, "{results:?}");
}

// ---------------------------------------------------------------------------------------------
// Silences

async fn silences_list_while_active_and_expire_once(store: SharedStore) {
    let now = Timestamp::now();
    let later = |ms: i64| Timestamp::from_unix_millis(now.unix_millis() + ms);
    let earlier = |ms: i64| Timestamp::from_unix_millis(now.unix_millis() - ms);
    let first = silence(
        "sil-a",
        SilenceTarget::Resource("web-1".to_owned()),
        earlier(2_000),
        later(3_600_000),
    );
    let ended = silence(
        "sil-ended",
        SilenceTarget::Resource("web-2".to_owned()),
        earlier(3_000),
        earlier(1_000),
    );
    let second = silence(
        "sil-b",
        SilenceTarget::Fingerprint(fingerprint(Signal::Disk, "/var")),
        earlier(1_000),
        later(7_200_000),
    );
    assert!(store.active_silences(now).await.unwrap().is_empty());
    // Added in another order, listed oldest first.
    for s in [&second, &ended, &first] {
        store.add_silence(s).await.unwrap();
    }
    assert_eq!(
        store.active_silences(now).await.unwrap(),
        vec![first.clone(), second.clone()]
    );
    // Later on, only the longer one is still in force; earlier, all three were.
    assert_eq!(
        store.active_silences(later(5_000_000)).await.unwrap(),
        vec![second.clone()]
    );
    assert_eq!(
        store.active_silences(earlier(2_000)).await.unwrap(),
        vec![ended.clone(), first.clone(), second.clone()]
    );

    assert!(store.expire_silence("sil-a", now).await.unwrap());
    assert!(
        !store.expire_silence("sil-a", now).await.unwrap(),
        "an ended silence cannot end again"
    );
    assert!(!store.expire_silence("sil-ended", now).await.unwrap());
    assert!(!store.expire_silence("sil-unknown", now).await.unwrap());
    assert_eq!(
        store.active_silences(now).await.unwrap(),
        vec![second.clone()]
    );
}

async fn concurrent_expiries_of_one_silence_end_it_once(store: SharedStore) {
    let now = Timestamp::now();
    let s = silence(
        "sil-race",
        SilenceTarget::Resource("race-web".to_owned()),
        now,
        now.saturating_add(Duration::from_secs(3600)),
    );
    store.add_silence(&s).await.unwrap();
    let results = race(10, |_| {
        let store = Arc::clone(&store);
        async move { store.expire_silence("sil-race", now).await }
    })
    .await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let ended = results.iter().filter(|r| matches!(r, Ok(true))).count();
    assert_eq!(ended, 1, "exactly one caller ends the silence: {results:?}");
    assert!(store.active_silences(now).await.unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Leases

async fn leases_fence_out_a_previous_holder(store: SharedStore) {
    const NAME: &str = "monitor";
    let short = Duration::from_millis(800);
    let long = Duration::from_secs(30);

    let a = store
        .acquire_lease(NAME, "replica-a", short, Timestamp::now())
        .await
        .unwrap()
        .expect("a free lease is granted");
    assert_eq!((a.name.as_str(), a.holder.as_str()), (NAME, "replica-a"));
    assert!(a.token >= 1);
    let t1 = a.token;
    assert!(store.check_fence(NAME, t1, Timestamp::now()).await.unwrap());

    // B cannot take it while A holds it; another lease name is independent.
    assert_eq!(
        store
            .acquire_lease(NAME, "replica-b", long, Timestamp::now())
            .await
            .unwrap(),
        None
    );
    let other = store
        .acquire_lease("other-task", "replica-b", long, Timestamp::now())
        .await
        .unwrap()
        .expect("a different lease is free");
    assert_eq!(other.holder, "replica-b");

    // A renews: same token.
    let renewed = store
        .acquire_lease(NAME, "replica-a", short, Timestamp::now())
        .await
        .unwrap()
        .expect("the holder renews");
    assert_eq!(renewed.token, t1);
    assert_eq!(renewed.holder, "replica-a");

    // A stops renewing; once the lease has expired, B takes over with a larger token.
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    assert!(
        !store.check_fence(NAME, t1, Timestamp::now()).await.unwrap(),
        "an expired lease fences nothing"
    );
    let b = store
        .acquire_lease(NAME, "replica-b", long, Timestamp::now())
        .await
        .unwrap()
        .expect("an expired lease is granted to someone else");
    let t2 = b.token;
    assert!(t2 > t1, "tokens grow: {t1} then {t2}");
    assert_eq!(b.holder, "replica-b");
    assert!(!store.check_fence(NAME, t1, Timestamp::now()).await.unwrap());
    assert!(store.check_fence(NAME, t2, Timestamp::now()).await.unwrap());
    assert_eq!(
        store
            .acquire_lease(NAME, "replica-a", short, Timestamp::now())
            .await
            .unwrap(),
        None
    );

    // A's late release does not remove B's lease.
    store.release_lease(&a).await.unwrap();
    store.release_lease(&renewed).await.unwrap();
    assert!(store.check_fence(NAME, t2, Timestamp::now()).await.unwrap());
    assert_eq!(
        store
            .acquire_lease(NAME, "replica-a", short, Timestamp::now())
            .await
            .unwrap(),
        None
    );

    // B's release frees it; the next holder gets a larger token still.
    store.release_lease(&b).await.unwrap();
    assert!(!store.check_fence(NAME, t2, Timestamp::now()).await.unwrap());
    let next = store
        .acquire_lease(NAME, "replica-a", long, Timestamp::now())
        .await
        .unwrap()
        .expect("a released lease is free");
    assert!(next.token > t2, "tokens grow: {t2} then {}", next.token);
    assert!(store
        .check_fence(NAME, next.token, Timestamp::now())
        .await
        .unwrap());
}

// ---------------------------------------------------------------------------------------------
// Control flags

async fn control_flags_default_to_running_and_round_trip(store: SharedStore) {
    let initial = store.control().await.unwrap();
    assert_eq!(initial, Control::default());
    assert!(!initial.paused);

    let paused = Control {
        paused: true,
        changed_by: Some("slack:U0ADMIN".to_owned()),
        changed_at: Some(Timestamp::now()),
    };
    store.set_control(&paused).await.unwrap();
    assert_eq!(store.control().await.unwrap(), paused);

    let resumed = Control {
        paused: false,
        changed_by: Some("api:ops".to_owned()),
        changed_at: Some(Timestamp::now()),
    };
    store.set_control(&resumed).await.unwrap();
    assert_eq!(store.control().await.unwrap(), resumed);
}

async fn automatic_actions_are_counted_per_key_within_a_window(store: SharedStore) {
    let now = Timestamp::now();
    let hour_ago = Timestamp::from_unix_millis(now.unix_millis() - 3_600_000);
    assert!(store.auto_actions_since(hour_ago).await.unwrap().is_empty());
    // Two hours ago (outside the window), then three within it for one key, one for another.
    let old = Timestamp::from_unix_millis(now.unix_millis() - 7_200_000);
    store
        .record_auto_action("container_restart:web-1", old)
        .await
        .unwrap();
    for _ in 0..3 {
        store
            .record_auto_action("container_restart:web-1", now)
            .await
            .unwrap();
    }
    store
        .record_auto_action("sandbox_cleanup:sandbox", now)
        .await
        .unwrap();
    let counts = store.auto_actions_since(hour_ago).await.unwrap();
    assert_eq!(
        counts.get("container_restart:web-1"),
        Some(&3),
        "{counts:?}"
    );
    assert_eq!(counts.get("sandbox_cleanup:sandbox"), Some(&1));
    assert_eq!(counts.len(), 2);
    let all = store.auto_actions_since(old).await.unwrap();
    assert_eq!(all.get("container_restart:web-1"), Some(&4));
    // Concurrent records are all counted (the same millisecond included).
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .record_auto_action("container_start:db", now)
                .await
                .unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let counts = store.auto_actions_since(hour_ago).await.unwrap();
    assert_eq!(counts.get("container_start:db"), Some(&10));
}

// ---------------------------------------------------------------------------------------------
// The Slack outbox

async fn outbox_queues_are_first_in_first_out_per_channel(store: SharedStore) {
    assert_eq!(store.outbox_head("C1").await.unwrap(), None);
    assert!(store.outbox_channels().await.unwrap().is_empty());
    let mut seqs = Vec::new();
    for n in 0..5 {
        seqs.push(store.outbox_push("C1", &json!({ "n": n })).await.unwrap());
        store
            .outbox_push("C2", &json!({ "m": n, "text": "ünïcødé <!channel>" }))
            .await
            .unwrap();
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_eq!(store.outbox_channels().await.unwrap(), vec!["C1", "C2"]);
    assert_eq!(store.outbox_len("C1").await.unwrap(), 5);
    // Reading the head leaves it in place.
    let head = store.outbox_head("C1").await.unwrap().unwrap();
    assert_eq!(head.seq, seqs[0]);
    assert_eq!(head.payload, json!({ "n": 0 }));
    assert_eq!(store.outbox_head("C1").await.unwrap().unwrap(), head);
    // Acks remove exactly the message named, once.
    for (n, seq) in seqs.iter().enumerate() {
        let head = store.outbox_head("C1").await.unwrap().unwrap();
        assert_eq!((head.seq, head.payload), (*seq, json!({ "n": n })));
        assert!(store.outbox_ack("C1", *seq).await.unwrap());
        assert!(!store.outbox_ack("C1", *seq).await.unwrap(), "acked twice");
    }
    assert_eq!(store.outbox_head("C1").await.unwrap(), None);
    assert_eq!(store.outbox_len("C1").await.unwrap(), 0);
    // An empty queue is no longer listed; the other channel is untouched.
    assert_eq!(store.outbox_channels().await.unwrap(), vec!["C2"]);
    let other = store.outbox_head("C2").await.unwrap().unwrap();
    assert_eq!(other.payload["text"], "ünïcødé <!channel>");
    assert_eq!(store.outbox_len("C2").await.unwrap(), 5);
    // Sequence numbers are never reused, even after the queue emptied.
    let later = store.outbox_push("C1", &json!({ "n": 99 })).await.unwrap();
    assert!(later > *seqs.last().unwrap());
}

async fn outbox_parks_a_message_with_its_error_atomically(store: SharedStore) {
    let first = store.outbox_push("C9", &json!({ "n": 1 })).await.unwrap();
    let second = store.outbox_push("C9", &json!({ "n": 2 })).await.unwrap();
    let error = "chat.postMessage failed: channel_not_found \"quoted\" ✓";
    assert!(store.outbox_park("C9", first, error, t(5)).await.unwrap());
    assert!(
        !store.outbox_park("C9", first, error, t(6)).await.unwrap(),
        "parked twice"
    );
    assert!(
        !store.outbox_ack("C9", first).await.unwrap(),
        "a parked message is not queued"
    );
    let head = store.outbox_head("C9").await.unwrap().unwrap();
    assert_eq!(head.seq, second);
    let parked = store.outbox_parked("C9").await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].seq, first);
    assert_eq!(parked[0].payload, json!({ "n": 1 }));
    assert_eq!(parked[0].error, error);
    assert_eq!(parked[0].parked_at, t(5).unix_millis());
    assert!(store.outbox_parked("C-other").await.unwrap().is_empty());
    // Parking the last message empties the queue.
    assert!(store
        .outbox_park("C9", second, "again", t(7))
        .await
        .unwrap());
    assert!(store.outbox_channels().await.unwrap().is_empty());
    let parked = store.outbox_parked("C9").await.unwrap();
    assert_eq!(
        parked.iter().map(|p| p.seq).collect::<Vec<_>>(),
        vec![first, second]
    );
}

async fn concurrent_outbox_pushes_keep_every_message_in_one_order(store: SharedStore) {
    let results = race(16, |i| {
        let store = store.clone();
        async move {
            let mut seqs = Vec::new();
            for j in 0..5 {
                seqs.push(
                    store
                        .outbox_push("C-race", &json!({ "task": i, "j": j }))
                        .await
                        .unwrap(),
                );
            }
            seqs
        }
    })
    .await;
    let mut expected: Vec<u64> = results.iter().flatten().copied().collect();
    expected.sort_unstable();
    expected.dedup();
    assert_eq!(expected.len(), 80, "every push got its own seq");
    // Drain: heads come out in seq order, and each task's messages in its own order.
    let mut drained = Vec::new();
    let mut last_j: BTreeMap<i64, i64> = BTreeMap::new();
    while let Some(head) = store.outbox_head("C-race").await.unwrap() {
        let (task, j) = (
            head.payload["task"].as_i64().unwrap(),
            head.payload["j"].as_i64().unwrap(),
        );
        if let Some(previous) = last_j.insert(task, j) {
            assert!(j > previous, "task {task}: {j} after {previous}");
        }
        drained.push(head.seq);
        assert!(store.outbox_ack("C-race", head.seq).await.unwrap());
    }
    assert_eq!(drained, expected);
}

async fn a_marked_push_queues_only_while_the_mark_is_as_read(store: SharedStore) {
    let queue = "pagerduty:events";
    assert_eq!(store.outbox_mark("inc-1").await.unwrap(), None);
    let first = json!({ "triggers": 1, "paging": true });
    // Never set: only a writer that read "none" may set it.
    assert!(!store
        .outbox_push_marked(queue, "inc-1", Some(&first), &first, &[json!({ "n": 0 })])
        .await
        .unwrap());
    assert_eq!(
        store.outbox_len(queue).await.unwrap(),
        0,
        "a refused push queued"
    );
    assert!(store
        .outbox_push_marked(
            queue,
            "inc-1",
            None,
            &first,
            &[json!({ "n": 1 }), json!({ "n": 2 })]
        )
        .await
        .unwrap());
    assert_eq!(
        store.outbox_mark("inc-1").await.unwrap(),
        Some(first.clone())
    );
    // A second writer that also read "none" changes nothing.
    assert!(!store
        .outbox_push_marked(
            queue,
            "inc-1",
            None,
            &json!({ "x": 1 }),
            &[json!({ "n": 9 })]
        )
        .await
        .unwrap());
    let second = json!({ "triggers": 1, "paging": false });
    assert!(store
        .outbox_push_marked(queue, "inc-1", Some(&first), &second, &[json!({ "n": 3 })])
        .await
        .unwrap());
    // An empty push moves the mark alone; other marks are their own.
    assert!(store
        .outbox_push_marked(queue, "inc-2", None, &json!({ "seen": 4 }), &[])
        .await
        .unwrap());
    assert_eq!(store.outbox_mark("inc-1").await.unwrap(), Some(second));
    assert_eq!(
        store.outbox_mark("inc-2").await.unwrap(),
        Some(json!({ "seen": 4 }))
    );
    // The queue holds what the accepted pushes queued, in order, in the usual queue API;
    // it is listed among the queues, and its seqs come from the one shared sequence.
    assert_eq!(store.outbox_channels().await.unwrap(), vec![queue]);
    let before = store
        .outbox_push("C1", &json!({ "slack": true }))
        .await
        .unwrap();
    let mut drained = Vec::new();
    while let Some(head) = store.outbox_head(queue).await.unwrap() {
        assert!(head.seq < before, "marked pushes share the outbox sequence");
        drained.push(head.payload["n"].as_i64().unwrap());
        assert!(store.outbox_ack(queue, head.seq).await.unwrap());
    }
    assert_eq!(drained, vec![1, 2, 3]);
}

async fn concurrent_marked_pushes_from_one_read_queue_once(store: SharedStore) {
    let queue = "pagerduty:race";
    let wins = race(12, |i| {
        let store = store.clone();
        async move {
            store
                .outbox_push_marked(
                    queue,
                    "inc-race",
                    None,
                    &json!({ "by": i }),
                    &[json!({ "by": i, "n": 1 }), json!({ "by": i, "n": 2 })],
                )
                .await
                .unwrap()
        }
    })
    .await;
    assert_eq!(wins.iter().filter(|won| **won).count(), 1, "{wins:?}");
    let winner = wins.iter().position(|won| *won).unwrap() as i64;
    assert_eq!(store.outbox_len(queue).await.unwrap(), 2);
    let head = store.outbox_head(queue).await.unwrap().unwrap();
    assert_eq!(head.payload, json!({ "by": winner, "n": 1 }));
    assert_eq!(
        store.outbox_mark("inc-race").await.unwrap(),
        Some(json!({ "by": winner }))
    );
}

async fn an_incident_keeps_its_slack_card(store: SharedStore) {
    let written = incident("slack-card");
    store.create_incident(&written).await.unwrap();
    assert_eq!(
        store
            .get_incident(&written.id)
            .await
            .unwrap()
            .unwrap()
            .slack,
        None
    );
    let card = sentinel::domain::SlackCard {
        channel: "C123".to_owned(),
        ts: Some("1700000000.000001".to_owned()),
        posted_entries: 1,
        rendered_version: 1,
        digest: "abc".to_owned(),
        ..Default::default()
    };
    let stored = store.put_card(&written.id, &card).await.unwrap();
    assert_eq!(stored.rev, 1);
    let back = store.get_incident(&written.id).await.unwrap().unwrap();
    assert_eq!(back.slack.as_ref(), Some(&stored));
    assert_eq!(back.version, written.version, "a card is not a decision");
    // Compare-and-set on the card's own revision: a stale writer is refused.
    let stale = store.put_card(&written.id, &card).await;
    assert!(
        matches!(
            stale,
            Err(StoreError::VersionConflict {
                expected: 0,
                found: 1,
                ..
            })
        ),
        "{stale:?}"
    );
    // A decision written from a copy read before the card keeps the card as stored.
    let mut decision = written.clone();
    decision.root_cause = Some("changed".to_owned());
    store.update_incident(&decision).await.unwrap();
    let back = store.get_incident(&written.id).await.unwrap().unwrap();
    assert_eq!(back.slack.as_ref(), Some(&stored));
    assert_eq!(back.root_cause.as_deref(), Some("changed"));
    // The card of an unknown incident is refused.
    let missing = store.put_card(&IncidentId::generate(), &card).await;
    assert!(
        matches!(missing, Err(StoreError::NotFound(_))),
        "{missing:?}"
    );
    // Incidents stored before the field existed still read.
    let mut old = serde_json::to_value(&written).unwrap();
    old.as_object_mut().unwrap().remove("slack");
    old.as_object_mut().unwrap().remove("proposal_id");
    old.as_object_mut().unwrap().remove("synthetic");
    let parsed: Incident = serde_json::from_value(old).unwrap();
    assert_eq!(parsed.slack, None);
    assert_eq!(parsed.proposal_id, None);
}

/// A repeat of the breach is an observation: counted exactly under concurrency, shown on
/// every read, never a new version, and never undone by a decision written from an older
/// copy (SPEC §12.1).
async fn sightings_count_without_bumping_the_version(store: SharedStore) {
    let written = incident("sightings");
    store.create_incident(&written).await.unwrap();
    let at = Timestamp::from_unix_millis(written.opened_at.unix_millis() + 30_000);
    let first = store
        .record_sighting(&written.id, 81.5, 60.0, at)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.occurrences, written.occurrences + 1);
    let mut tasks = Vec::new();
    for n in 0..40 {
        let (store, id) = (Arc::clone(&store), written.id.clone());
        tasks.push(tokio::spawn(async move {
            store
                .record_sighting(&id, 70.0 + f64::from(n), 60.0, at)
                .await
                .unwrap()
                .unwrap()
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let last_at = Timestamp::from_unix_millis(at.unix_millis() + 1);
    store
        .record_sighting(&written.id, 99.25, 65.0, last_at)
        .await
        .unwrap();
    let back = store.get_incident(&written.id).await.unwrap().unwrap();
    assert_eq!(back.occurrences, written.occurrences + 42);
    assert_eq!(back.value, 99.25);
    assert_eq!(back.threshold, 65.0);
    assert_eq!(back.last_seen_at, last_at);
    assert_eq!(
        back.version, written.version,
        "sightings never bump the version"
    );
    // A decision from a copy read before the sightings does not undo them.
    let mut decision = written.clone();
    decision.root_cause = Some("decided".to_owned());
    let decided = store.update_incident(&decision).await.unwrap();
    assert_eq!(decided.version, written.version + 1);
    let back = store.get_incident(&written.id).await.unwrap().unwrap();
    assert_eq!(back.occurrences, written.occurrences + 42);
    assert_eq!(back.value, 99.25);
    // Lists show the same.
    let listed = store
        .list_incidents(IncidentQuery::default())
        .await
        .unwrap();
    let listed = listed.iter().find(|i| i.id == written.id).unwrap();
    assert_eq!(listed.occurrences, written.occurrences + 42);
    // No incident, no sighting.
    let none = store
        .record_sighting(&IncidentId::generate(), 1.0, 1.0, at)
        .await
        .unwrap();
    assert_eq!(none, None);
}

/// Pause and resume are atomic: of 20 concurrent pauses exactly one changes the flag (and so
/// only one is audited by the service), and the same for resumes.
async fn concurrent_pauses_change_the_flag_once(store: SharedStore) {
    let at = Timestamp::from_unix_millis(1_795_860_000_000);
    for paused in [true, false] {
        let mut tasks = Vec::new();
        for n in 0..20 {
            let store = Arc::clone(&store);
            tasks.push(tokio::spawn(async move {
                store
                    .switch_paused(paused, &format!("api:k{n} (admin)"), at)
                    .await
                    .unwrap()
            }));
        }
        let mut changed = Vec::new();
        for task in tasks {
            if let Some(control) = task.await.unwrap() {
                changed.push(control);
            }
        }
        assert_eq!(changed.len(), 1, "paused={paused}: {changed:?}");
        let stored = store.control().await.unwrap();
        assert_eq!(stored, changed[0]);
        assert_eq!(stored.paused, paused);
        assert_eq!(
            store.switch_paused(paused, "again", at).await.unwrap(),
            None
        );
    }
}

/// Two replicas on one Redis append to one chain: each remembers the head it last wrote, and
/// an append after the other replica's must notice and chain after that one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_replicas_appending_in_turn_and_together_keep_one_chain() {
    let prefix = crate::helpers::unique_prefix();
    let url = crate::helpers::redis_url();
    let connect = || sentinel::store::redis::RedisStore::connect(&url, &prefix);
    let (a, b) = (connect().await.unwrap(), connect().await.unwrap());
    let (a, b): (SharedStore, SharedStore) = (Arc::new(a), Arc::new(b));

    // In turn: every append but the first finds the other replica's entry on the head.
    for n in 0..10 {
        let (store, other) = if n % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let entry = store.append_audit(audit_record(n)).await.unwrap();
        assert_eq!(entry.seq, n as u64 + 1, "append {n}");
        let seen = other.list_audit().await.unwrap();
        assert_eq!(seen.last(), Some(&entry));
    }
    // Together.
    let results = race(20, |n| {
        let store = Arc::clone(if n % 2 == 0 { &a } else { &b });
        async move { store.append_audit(audit_record(10 + n)).await }
    })
    .await;
    for (n, result) in results.into_iter().enumerate() {
        result.unwrap_or_else(|e| panic!("append {n}: {e}"));
    }
    let listed = a.list_audit().await.unwrap();
    let seqs: Vec<u64> = listed.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=30).collect::<Vec<u64>>(), "no gaps, no repeats");
    assert_eq!(verify_chain(&listed).length, 30);
    assert!(verify_chain(&listed).verified);
    assert_eq!(b.list_audit().await.unwrap(), listed);
}

// ---------------------------------------------------------------------------------------------
// Trust (earned autonomy)

fn trust_key(target: &str) -> sentinel::domain::TrustKey {
    sentinel::domain::TrustKey::parse("container_down", "container_start", target).unwrap()
}

fn trust_grant(id: &str, target: &str, at: i64) -> sentinel::domain::TrustGrant {
    sentinel::domain::TrustGrant {
        id: id.to_owned(),
        key: trust_key(target),
        granted_by: "api:ops (admin)".to_owned(),
        granted_at: Timestamp::from_unix_millis(at),
        earned_by: 2,
    }
}

async fn trust_runs_count_verified_fixes_and_a_break_ends_run_and_grant(store: SharedStore) {
    use sentinel::store::TrustGrantOutcome;
    assert!(store.trust_runs().await.unwrap().is_empty());
    let (web, db) = (trust_key("web"), trust_key("db"));
    assert_eq!(store.trust_count_verified(&web).await.unwrap(), 1);
    assert_eq!(store.trust_count_verified(&web).await.unwrap(), 2);
    assert_eq!(store.trust_count_verified(&db).await.unwrap(), 1);
    let runs: BTreeMap<String, u64> = store
        .trust_runs()
        .await
        .unwrap()
        .into_iter()
        .map(|run| (run.key.as_string(), run.verified_in_a_row))
        .collect();
    assert_eq!(
        runs,
        BTreeMap::from([
            ("container_down:container_start:db".to_owned(), 1),
            ("container_down:container_start:web".to_owned(), 2),
        ])
    );
    let grant = trust_grant("trust-1", "web", 1_000);
    assert_eq!(
        store.grant_trust(&grant, 2).await.unwrap(),
        TrustGrantOutcome::Granted
    );
    // A break ends the run and takes the grant with it, and says which grant it was.
    assert_eq!(store.trust_break(&web).await.unwrap(), Some(grant));
    assert!(store.trust_grants().await.unwrap().is_empty());
    let runs = store.trust_runs().await.unwrap();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].key, db);
    // Breaking again, or a pair with nothing, changes nothing.
    assert_eq!(store.trust_break(&web).await.unwrap(), None);
    assert_eq!(store.trust_break(&trust_key("none")).await.unwrap(), None);
    // A run starts again from one.
    assert_eq!(store.trust_count_verified(&web).await.unwrap(), 1);
}

async fn trust_is_granted_only_when_earned_and_once_per_pair(store: SharedStore) {
    use sentinel::store::TrustGrantOutcome;
    let web = trust_key("web");
    let first = trust_grant("trust-a", "web", 2_000);
    assert_eq!(
        store.grant_trust(&first, 2).await.unwrap(),
        TrustGrantOutcome::NotEarned {
            verified_in_a_row: 0
        }
    );
    store.trust_count_verified(&web).await.unwrap();
    assert_eq!(
        store.grant_trust(&first, 2).await.unwrap(),
        TrustGrantOutcome::NotEarned {
            verified_in_a_row: 1
        }
    );
    assert!(store.trust_grants().await.unwrap().is_empty());
    store.trust_count_verified(&web).await.unwrap();
    assert_eq!(
        store.grant_trust(&first, 2).await.unwrap(),
        TrustGrantOutcome::Granted
    );
    let second = trust_grant("trust-b", "web", 3_000);
    assert_eq!(
        store.grant_trust(&second, 2).await.unwrap(),
        TrustGrantOutcome::AlreadyTrusted(first.clone())
    );
    // Another pair, granted later, lists after it (oldest first).
    let db = trust_key("db");
    store.trust_count_verified(&db).await.unwrap();
    let other = trust_grant("trust-c", "db", 4_000);
    assert_eq!(
        store.grant_trust(&other, 1).await.unwrap(),
        TrustGrantOutcome::Granted
    );
    assert_eq!(
        store.trust_grants().await.unwrap(),
        vec![first.clone(), other.clone()]
    );
    // Revoking by id removes that grant only, once, and keeps the run.
    assert_eq!(store.revoke_trust("trust-a").await.unwrap(), Some(first));
    assert_eq!(store.revoke_trust("trust-a").await.unwrap(), None);
    assert_eq!(store.revoke_trust("trust-nope").await.unwrap(), None);
    assert_eq!(store.trust_grants().await.unwrap(), vec![other]);
    let run = store
        .trust_runs()
        .await
        .unwrap()
        .into_iter()
        .find(|run| run.key == web)
        .unwrap();
    assert_eq!(run.verified_in_a_row, 2);
}

async fn concurrent_trust_grants_of_one_pair_store_exactly_one(store: SharedStore) {
    use sentinel::store::TrustGrantOutcome;
    store.trust_count_verified(&trust_key("web")).await.unwrap();
    let results = race(16, |n| {
        let store = Arc::clone(&store);
        async move {
            let grant = trust_grant(&format!("trust-{n}"), "web", 1_000 + n as i64);
            store.grant_trust(&grant, 1).await
        }
    })
    .await;
    let granted = results
        .into_iter()
        .map(Result::unwrap)
        .filter(|outcome| *outcome == TrustGrantOutcome::Granted)
        .count();
    assert_eq!(granted, 1);
    assert_eq!(store.trust_grants().await.unwrap().len(), 1);
}
