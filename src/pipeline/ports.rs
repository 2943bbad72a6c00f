//! The pipeline's ports: what it needs from the outside world, declared here
//! in domain terms and implemented by the adapters (`pbx` is a
//! `SessionSource`, `store` an `AnswerSink`). Nothing here does I/O.

use std::future::Future;

use crate::processing::{Answer, BatchResult, FetchError, WriteError};
use crate::session::SessionId;

/// Fetches sessions from the PBX.
pub trait SessionSource: Send + Sync + 'static {
    /// One result per id asked for, in any order; "not found" is an
    /// `Answer::Missing`, not an error.
    fn fetch(
        &self,
        ids: &[SessionId],
    ) -> impl Future<Output = Vec<(SessionId, Result<Answer, FetchError>)>> + Send;
}

/// Writes answers to the database.
pub trait AnswerSink: Send + Sync + 'static {
    /// Writes a batch; one result per answer, in order. Retries a database
    /// that is unavailable, and isolates data the database refuses to the
    /// answer that carries it.
    fn write(
        &self,
        answers: &[Answer],
    ) -> impl Future<Output = Vec<Result<BatchResult, WriteError>>> + Send;
}
