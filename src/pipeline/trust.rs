//! Trust: earned autonomy (SPEC §12.4). Counts, per (signal, action, target), the fixes people
//! approved that then verified; offers trust once the run reaches `[actions] trust_after`; and
//! revokes a grant when a fix of that pair fails verification or is rolled back.
//!
//! In: incidents whose fix just verified, failed verification, or was rolled back (the
//! remediation runner calls [`fix_verified`] and [`fix_undone`]). Out: the pair's run in the
//! store, timeline entries people read in the incident's thread (`trust_offered`,
//! `trust_revoked`) and audit entries (`TrustOffered`, `TrustRevoked`).
//!
//! The policy decides what a grant changes (`policy::trusted_risk`); grants are made and
//! withdrawn by admins through the service (`service::trust`). Nothing here fails the caller:
//! a store error is logged and the incident goes on.

use crate::domain::{
    earned, Actor, Incident, TimelineEntry, Timestamp, TrustGrant, TrustKey, TrustRun,
};
use crate::pipeline::audit::{self, AuditEvent};
use crate::pipeline::Pipeline;
use crate::store::{Store, StoreResult};

/// Timeline steps of trust; each is a thread reply (`slack::cards::announces`).
pub const STEP_OFFERED: &str = "trust_offered";
pub const STEP_GRANTED: &str = "trust_granted";
pub const STEP_REVOKED: &str = "trust_revoked";
pub const STEP_TRUSTED: &str = "trusted";

/// The grant in force for `key`, if any.
pub async fn grant_for(store: &dyn Store, key: &TrustKey) -> StoreResult<Option<TrustGrant>> {
    Ok(store
        .trust_grants()
        .await?
        .into_iter()
        .find(|grant| &grant.key == key))
}

/// A pair's run of verified approvals (0 when it has none).
pub async fn run_of(store: &dyn Store, key: &TrustKey) -> StoreResult<u64> {
    Ok(store
        .trust_runs()
        .await?
        .into_iter()
        .find(|run: &TrustRun| &run.key == key)
        .map_or(0, |run| run.verified_in_a_row))
}

/// Whether a person approved the fix this incident ran (the policy's own runs do not earn
/// trust: they are what trust allows, not evidence for it).
fn approved_by_people(incident: &Incident) -> bool {
    !incident.approvals.is_empty()
}

/// The incident's fix verified. A fix people approved adds one to its pair's run; when the run
/// reaches `trust_after` and the pair is not trusted yet, the incident's thread and card offer
/// an admin to trust it.
pub async fn fix_verified(pipeline: &Pipeline, incident: &Incident) {
    if let Err(e) = count_verified(pipeline, incident).await {
        tracing::warn!(incident = %incident.id, error = %e, "cannot count a verified fix for trust");
    }
}

async fn count_verified(pipeline: &Pipeline, incident: &Incident) -> StoreResult<()> {
    if incident.synthetic || !approved_by_people(incident) {
        return Ok(());
    }
    let Some(key) = TrustKey::of_incident(incident) else {
        return Ok(());
    };
    let store = pipeline.store.as_ref();
    let run = store.trust_count_verified(&key).await?;
    let trust_after = pipeline.settings.actions.trust_after;
    if !earned(run, trust_after) || grant_for(store, &key).await?.is_some() {
        return Ok(());
    }
    let message = format!(
        "{run} {} of {} in a row were approved by people and verified. An admin may let \
         Sentinel do this on its own from now on (\"Let Sentinel do this\" on the card, or \
         `/sentinel trust grant {} {} {}`).",
        if run == 1 { "fix" } else { "fixes" },
        key,
        key.signal,
        key.action,
        key.target
    );
    let stored = store
        .append_timeline(&incident.id, entry(STEP_OFFERED, message))
        .await?;
    audit::emit(
        store,
        &Actor::Sentinel,
        AuditEvent::TrustOffered {
            incident: &stored,
            key: &key,
            verified_in_a_row: run,
        },
        Timestamp::now(),
    )
    .await?;
    Ok(())
}

/// The incident's fix failed verification or was rolled back (`what`: "failed verification",
/// "was rolled back"). Its pair's run starts again from 0, and a grant is revoked, which the
/// incident's thread and the audit say.
pub async fn fix_undone(pipeline: &Pipeline, incident: &Incident, what: &str) {
    if let Err(e) = break_trust(pipeline, incident, what).await {
        tracing::warn!(incident = %incident.id, error = %e, "cannot end the trust of a failed fix");
    }
}

async fn break_trust(pipeline: &Pipeline, incident: &Incident, what: &str) -> StoreResult<()> {
    if incident.synthetic {
        return Ok(());
    }
    let Some(key) = TrustKey::of_incident(incident) else {
        return Ok(());
    };
    let store = pipeline.store.as_ref();
    let Some(grant) = store.trust_break(&key).await? else {
        return Ok(());
    };
    let why = format!("the fix of {} {what}", incident.id);
    let message = format!(
        "Trust revoked: {key} was trusted ({}, granted by {}), but this fix {what}. Its next \
         fixes wait for a person's approval again.",
        grant.id, grant.granted_by
    );
    let stored = store
        .append_timeline(&incident.id, entry(STEP_REVOKED, message))
        .await?;
    audit::emit(
        store,
        &Actor::Sentinel,
        AuditEvent::TrustRevoked {
            grant: &grant,
            why: &why,
            incident: Some(&stored),
        },
        Timestamp::now(),
    )
    .await?;
    tracing::info!(incident = %incident.id, grant = grant.id, "trust revoked");
    Ok(())
}

/// The policy ran this incident's fix as low risk because of `grant`: the thread says so.
pub async fn note_trusted(pipeline: &Pipeline, incident: &Incident, grant: &TrustGrant) {
    let message = format!(
        "{} is trusted ({}, granted by {} after {} verified approvals), so it runs as low \
         risk, on its own.",
        grant.key, grant.id, grant.granted_by, grant.earned_by
    );
    let appended = pipeline
        .store
        .append_timeline(&incident.id, entry(STEP_TRUSTED, message))
        .await;
    if let Err(e) = appended {
        tracing::warn!(incident = %incident.id, error = %e, "cannot record that trust applied");
    }
}

pub fn entry(step: &str, message: String) -> TimelineEntry {
    TimelineEntry {
        at: Timestamp::now(),
        step: step.to_owned(),
        actor: "sentinel".to_owned(),
        message,
    }
}
