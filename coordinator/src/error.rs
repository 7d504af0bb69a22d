//! The coordinator's error type and its one mapping to gRPC status codes.

use crate::store::StoreError;

/// Errors of coordinator operations.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed or asks for something invalid; nothing was changed.
    #[error("{0}")]
    InvalidArgument(String),
    /// The named object does not exist.
    #[error("{kind} {:?} not found", drover_proto::manifest::excerpt(name))]
    NotFound {
        /// Object kind, e.g. "service".
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// The request conflicts with the current state (a live session of a newer agent, a
    /// limit reached); nothing was changed.
    #[error("{0}")]
    Refused(String),
    /// The caller did not prove who it is (no token, an unknown or revoked one, a
    /// certificate for someone else); nothing was changed.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller's role does not allow the request; nothing was changed.
    #[error("{0}")]
    Forbidden(String),
    /// The store failed; the change was not made.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// A background task failed unexpectedly.
    #[error("internal: {0}")]
    Internal(String),
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        match &e {
            Error::InvalidArgument(_) => tonic::Status::invalid_argument(e.to_string()),
            Error::NotFound { .. } => tonic::Status::not_found(e.to_string()),
            Error::Refused(_) => tonic::Status::failed_precondition(e.to_string()),
            Error::Unauthenticated(_) => tonic::Status::unauthenticated(e.to_string()),
            Error::Forbidden(_) => tonic::Status::permission_denied(e.to_string()),
            Error::Store(_) => tonic::Status::unavailable(e.to_string()),
            Error::Internal(_) => tonic::Status::internal(e.to_string()),
        }
    }
}
