//! Trust, as people handle it (SPEC §12.4): list what Sentinel is trusted with and what it is
//! earning, grant trust to a fix that earned it, revoke a grant. The same for `POST/GET/DELETE
//! /api/trust`, `/sentinel trust …` and the card's "Let Sentinel do this".
//!
//! Grants and revocations need an admin and are audited (`TrustGranted`, `TrustRevoked`). A
//! grant needs the pair's run of verified approvals to have reached `[actions] trust_after`:
//! autonomy is earned, never given on a hunch. Counting and automatic revocation are the
//! pipeline's (`pipeline::trust`); what a grant changes is the policy's.

use serde::Serialize;

use super::{require, Sentinel, ServiceError};
use crate::domain::{Actor, Incident, IncidentId, Role, Timestamp, TrustGrant, TrustKey, TrustRun};
use crate::pipeline::audit::{self, AuditEvent};
use crate::pipeline::trust;
use crate::store::TrustGrantOutcome;

/// The body of `GET /api/trust`.
#[derive(Debug, Clone, Serialize)]
pub struct TrustReport {
    /// `[actions] trust_after`.
    pub trust_after: u32,
    /// The grants in force, oldest first.
    pub grants: Vec<TrustGrant>,
    /// Every pair's run of verified approvals, with whether it earned the offer.
    pub runs: Vec<TrustRunView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TrustRunView {
    #[serde(flatten)]
    pub run: TrustRun,
    /// The run reached `trust_after`: an admin may grant it.
    pub earned: bool,
    /// The id of the pair's grant, when it has one.
    pub trusted: Option<String>,
}

impl Sentinel {
    /// What Sentinel is trusted with, and what it is earning.
    pub async fn trust(&self) -> Result<TrustReport, ServiceError> {
        let trust_after = self.settings.actions.trust_after;
        let grants = self.store.trust_grants().await?;
        let runs = self
            .store
            .trust_runs()
            .await?
            .into_iter()
            .map(|run| TrustRunView {
                earned: crate::domain::earned(run.verified_in_a_row, trust_after),
                trusted: grants
                    .iter()
                    .find(|grant| grant.key == run.key)
                    .map(|grant| grant.id.clone()),
                run,
            })
            .collect();
        Ok(TrustReport {
            trust_after,
            grants,
            runs,
        })
    }

    /// Lets Sentinel run `key`'s fixes on its own (admins), once its run of verified
    /// approvals reached `trust_after`. `from`: the incident whose card offered it; its
    /// thread says who granted it and the card stops offering.
    #[tracing::instrument(name = "grant_trust", skip_all, fields(key = %key, actor = %actor))]
    pub async fn grant_trust(
        &self,
        key: TrustKey,
        from: Option<&IncidentId>,
        actor: &Actor,
    ) -> Result<TrustGrant, ServiceError> {
        require(actor, Role::Admin, "trusting a fix")?;
        let trust_after = self.settings.actions.trust_after;
        let now = Timestamp::now();
        let grant = TrustGrant {
            id: format!(
                "trust-{}",
                IncidentId::generate().as_str().trim_start_matches("inc-")
            ),
            earned_by: trust::run_of(self.store.as_ref(), &key).await?,
            key,
            granted_by: actor.to_string(),
            granted_at: now,
        };
        match self
            .store
            .grant_trust(&grant, u64::from(trust_after))
            .await?
        {
            TrustGrantOutcome::Granted => {}
            TrustGrantOutcome::AlreadyTrusted(existing) => {
                return Err(ServiceError::Conflict(format!(
                    "{} is already trusted ({}, granted by {})",
                    existing.key, existing.id, existing.granted_by
                )))
            }
            TrustGrantOutcome::NotEarned { verified_in_a_row } => {
                return Err(ServiceError::Conflict(format!(
                    "{} has {verified_in_a_row} approved {} in a row that verified; trust \
                     needs {trust_after} ([actions] trust_after)",
                    grant.key,
                    if verified_in_a_row == 1 {
                        "fix"
                    } else {
                        "fixes"
                    }
                )))
            }
        }
        let incident = match from {
            Some(id) => self.note_granted(id, &grant).await,
            None => None,
        };
        audit::emit(
            self.store.as_ref(),
            actor,
            AuditEvent::TrustGranted {
                grant: &grant,
                incident: incident.as_ref(),
            },
            now,
        )
        .await?;
        tracing::info!(grant = grant.id, "trust granted");
        Ok(grant)
    }

    /// The thread of the incident a grant was made from says so; its card stops offering.
    async fn note_granted(&self, id: &IncidentId, grant: &TrustGrant) -> Option<Incident> {
        let message = format!(
            "{} trusted {} ({}): from now on it runs on its own, as low risk.",
            grant.granted_by, grant.key, grant.id
        );
        match self
            .store
            .append_timeline(id, trust::entry(trust::STEP_GRANTED, message))
            .await
        {
            Ok(incident) => Some(incident),
            Err(e) => {
                tracing::warn!(incident = %id, error = %e, "cannot note a trust grant on its incident");
                None
            }
        }
    }

    /// Withdraws grant `id` (admins): that fix waits for approval again. Its run of verified
    /// approvals is kept, so it may be granted again.
    #[tracing::instrument(name = "revoke_trust", skip_all, fields(grant = id, actor = %actor))]
    pub async fn revoke_trust(&self, id: &str, actor: &Actor) -> Result<TrustGrant, ServiceError> {
        require(actor, Role::Admin, "revoking trust")?;
        let id = id.trim();
        let Some(grant) = self.store.revoke_trust(id).await? else {
            return Err(ServiceError::NotFound(format!("trust grant {id}")));
        };
        let why = format!("revoked by {actor}");
        audit::emit(
            self.store.as_ref(),
            actor,
            AuditEvent::TrustRevoked {
                grant: &grant,
                why: &why,
                incident: None,
            },
            Timestamp::now(),
        )
        .await?;
        Ok(grant)
    }
}
