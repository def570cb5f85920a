//! Intake: the one path from a [`Detection`] to an open incident.
//!
//! Monitoring, `POST /api/trigger-alert`, `/sentinel trigger` and the alert webhooks all come
//! through [`open_or_update`], so silences and deduplication hold for every source alike.
//! A test alert (`trigger`) is `synthetic` and has a fingerprint of its own
//! (`test:signal:resource`, [`Detection::fingerprint`]): a real breach never folds into it,
//! nor it into a real incident; its fix is only ever a dry run (`remediate`).
//!
//! In: a detection and `now`. Out: a new incident, an updated one, or the silence that
//! suppressed it. Writes the store and the audit log.

use crate::domain::{
    Actor, Detection, Fingerprint, Incident, IncidentId, Silence, Status, Timestamp,
};
use crate::pipeline::audit::{self, AuditEvent};
use crate::pipeline::engine::{Event, Recovery};
use crate::pipeline::remediate::{self, Stepped};
use crate::store::{Store, StoreError, StoreResult};

#[derive(Debug, Clone, PartialEq)]
pub enum Intake {
    /// A new incident was opened.
    Opened(Incident),
    /// The fingerprint already had an open incident; it was updated, not duplicated.
    Updated(Incident),
    /// A silence is in force for this fingerprint or resource: nothing was opened.
    Silenced(Silence),
}

/// Opens an incident for `detection`, or updates the open one of its fingerprint.
#[tracing::instrument(name = "intake", skip_all, fields(fingerprint = %detection.fingerprint()))]
pub async fn open_or_update(
    store: &dyn Store,
    detection: &Detection,
    now: Timestamp,
) -> StoreResult<Intake> {
    let fingerprint = detection.fingerprint();
    // Repeats of an open incident are recorded even while silenced: a silence stops new
    // incidents, it does not hide what an open one is doing.
    loop {
        if let Some(mut open) = store.open_incident_for(&fingerprint).await? {
            // A repeat is an observation: stored apart, the decision's version untouched.
            let Some(sighting) = store
                .record_sighting(&open.id, detection.value, detection.threshold, now)
                .await?
            else {
                continue;
            };
            open.apply_sighting(&sighting);
            if !open.raise_severity(detection, now) {
                return Ok(Intake::Updated(open));
            }
            // A rise in severity is a decision change: compare-and-set, again on a conflict.
            loop {
                match store.update_incident(&open).await {
                    Ok(updated) => return Ok(Intake::Updated(updated)),
                    Err(StoreError::VersionConflict { .. }) => {
                        match store.get_incident(&open.id).await? {
                            Some(fresh) if fresh.is_open() => {
                                open = fresh;
                                if !open.raise_severity(detection, now) {
                                    return Ok(Intake::Updated(open));
                                }
                            }
                            _ => return Ok(Intake::Updated(open)),
                        }
                    }
                    Err(StoreError::NotFound(_)) => return Ok(Intake::Updated(open)),
                    Err(other) => return Err(other),
                }
            }
        }
        // A test alert is silenced by what silences the real breach it stands for.
        let real = Fingerprint::new(detection.signal, &detection.resource);
        let silences = store.active_silences(now).await?;
        if let Some(silence) = silences.into_iter().find(|s| {
            s.target.matches(&fingerprint, detection.resource.as_str())
                || s.target.matches(&real, detection.resource.as_str())
        }) {
            return Ok(Intake::Silenced(silence));
        }
        let incident = Incident::open(IncidentId::generate(), detection, now);
        match store.create_incident(&incident).await {
            Ok(()) => {
                audit::emit(
                    store,
                    &Actor::Sentinel,
                    AuditEvent::IncidentOpened {
                        incident: &incident,
                    },
                    now,
                )
                .await?;
                return Ok(Intake::Opened(incident));
            }
            // Another replica or request opened it first: update that one instead.
            Err(StoreError::DuplicateOpen { .. }) => continue,
            Err(other) => return Err(other),
        }
    }
}

/// The open incident of `fingerprint` recovered (its signal is clean, or its source said
/// so): the incident engine decides what that means at its status. Before a fix runs it
/// resolves (step `recovered`); while a fix runs or is verified it is recorded, and
/// verification uses it. Returns the incident as stored when it changed; `None` when there
/// is no open incident or nothing changed (the recovery was already recorded).
pub async fn resolve(
    store: &dyn Store,
    fingerprint: &Fingerprint,
    by: Recovery,
    actor: &Actor,
    message: &str,
    now: Timestamp,
) -> StoreResult<Option<Incident>> {
    let Some(open) = store.open_incident_for(fingerprint).await? else {
        return Ok(None);
    };
    let id = open.id.clone();
    let event = Event::Recovered {
        by,
        actor: actor.clone(),
        message: message.to_owned(),
    };
    let Some(Stepped::Moved { stored, .. }) =
        remediate::step(store, &id, Some(open), &event, now).await?
    else {
        return Ok(None);
    };
    let audited = if stored.status == Status::Resolved {
        AuditEvent::IncidentResolved {
            incident: &stored,
            message,
        }
    } else {
        AuditEvent::Step {
            step: crate::pipeline::audit::Step::RecoveryNoted,
            incident: &stored,
            details: serde_json::json!({ "message": message, "status": stored.status }),
        }
    };
    audit::emit(store, actor, audited, now).await?;
    Ok(Some(stored))
}
