//! What can stop a reconcile, by kind: each says what it comes from (the ModelRollout, its
//! policy, the InferenceService, Prometheus, the Lease) in words a person can act on.

/// A reconcile error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The ModelRollout's policy does not check.
    #[error("the policy of ModelRollout {rollout} is invalid:\n{diagnostics}")]
    InvalidPolicy {
        /// `namespace/name`.
        rollout: String,
        /// The diagnostics, one per line (`line:col code message`).
        diagnostics: String,
    },
    /// The InferenceService the policy targets does not exist.
    #[error("InferenceService {target} not found")]
    TargetNotFound {
        /// `namespace/name`.
        target: String,
    },
    /// The ModelRollout was deleted while it was being reconciled.
    #[error(
        "ModelRollout {rollout} was deleted (garbage-collected with its InferenceService?); nothing to roll out"
    )]
    RolloutGone {
        /// `namespace/name`.
        rollout: String,
    },
    /// rolloutctl will not act on this target or state, and says why.
    #[error("{0}")]
    Refused(String),
    /// The stored state cannot be driven by this policy.
    #[error(
        "the stored state of ModelRollout {rollout} is invalid: {detail}; traffic is left where it is (`rolloutctl retry` starts the rollout over)"
    )]
    InvalidState {
        /// `namespace/name`.
        rollout: String,
        /// What does not fit.
        detail: String,
    },
    /// Prometheus or a metric is not usable, found before any traffic moved.
    #[error("preflight refused: {0}")]
    Preflight(String),
    /// This process does not hold the rollout's Lease (any more).
    #[error("this runner does not hold the Lease {lease}{}", holder.as_ref().map(|h| format!(" (held by {h})")).unwrap_or_default())]
    LeaseLost {
        /// The Lease.
        lease: String,
        /// Who holds it, when known.
        holder: Option<String>,
    },
    /// An object changed after it was read; the decision is void and is made again.
    #[error("{0} changed since it was read (409 Conflict); deciding again")]
    Conflict(String),
    /// The Kubernetes API failed.
    #[error("{what}: {source}")]
    Kube {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: kube::Error,
    },
}

impl Error {
    /// A Kubernetes API error with what was being done.
    pub fn kube(what: impl Into<String>, source: kube::Error) -> Error {
        Error::Kube {
            what: what.into(),
            source,
        }
    }

    /// Whether retrying later can help (a controller keeps reconciling; `run` keeps going).
    pub fn transient(&self) -> bool {
        match self {
            Error::Conflict(_) => true,
            Error::Kube { source, .. } => crate::isvc::transient(source),
            _ => false,
        }
    }
}
