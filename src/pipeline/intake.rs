//! Intake: the one path from a [`Detection`] to an open incident.
//!
//! Monitoring, `POST /api/trigger-alert`, `/sentinel trigger` and the alert webhooks all come
//! through [`open_or_update`], so silences and deduplication hold for every source alike.
//!
//! In: a detection and `now`. Out: a new incident, an updated one, or the silence that
//! suppressed it. Writes the store and the audit log.

use crate::domain::{
    Actor, Detection, Fingerprint, Incident, IncidentId, Silence, Status, Timestamp,
};
use crate::pipeline::audit::{self, AuditEvent};
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
        let silences = store.active_silences(now).await?;
        if let Some(silence) = silences
            .into_iter()
            .find(|s| s.target.matches(&fingerprint, detection.resource.as_str()))
        {
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

/// Resolves the open incident of `fingerprint` because its signal recovered (or its source
/// said so). `None` when there is no open incident, or when it cannot resolve now: while a
/// fix is executing or being verified, verification decides.
pub async fn resolve(
    store: &dyn Store,
    fingerprint: &Fingerprint,
    actor: &Actor,
    message: &str,
    now: Timestamp,
) -> StoreResult<Option<Incident>> {
    loop {
        let Some(mut incident) = store.open_incident_for(fingerprint).await? else {
            return Ok(None);
        };
        // A fix is being decided on or running: verification, not the monitor, closes it.
        if matches!(
            incident.status,
            Status::Analyzing | Status::Approved | Status::Executing | Status::Verifying
        ) {
            return Ok(None);
        }
        if incident
            .transition(Status::Resolved, &actor.to_string(), message, now)
            .is_err()
        {
            return Ok(None);
        }
        match store.update_incident(&incident).await {
            Ok(stored) => {
                audit::emit(
                    store,
                    actor,
                    AuditEvent::IncidentResolved {
                        incident: &stored,
                        message,
                    },
                    now,
                )
                .await?;
                return Ok(Some(stored));
            }
            Err(StoreError::VersionConflict { .. }) => continue,
            Err(StoreError::NotFound(_)) => return Ok(None),
            Err(other) => return Err(other),
        }
    }
}
