//! Metrics of the PBX calls: times each request and counts it by endpoint
//! and by what the errcode table (`error::CallError`) made of it. Never
//! changes an answer, and never reads an errcode itself.

use std::time::Instant;

use super::PbxError;
use super::error::CallError;
use crate::metrics::{self, PbxEndpoint, PbxResult};

/// Awaits one request and records it.
pub(super) async fn observed<T>(
    endpoint: PbxEndpoint,
    request: impl Future<Output = Result<T, CallError>>,
) -> Result<T, CallError> {
    let started = Instant::now();
    let answer = request.await;
    metrics::get().pbx_request(endpoint, result_class(&answer), started.elapsed());
    answer
}

fn result_class<T>(answer: &Result<T, CallError>) -> PbxResult {
    match answer {
        Ok(_) => PbxResult::Ok,
        Err(CallError::TokenExpired(_)) => PbxResult::TokenExpired,
        Err(CallError::Unsupported(_)) => PbxResult::Unsupported,
        Err(CallError::Failed(PbxError::Transient(_))) => PbxResult::Transient,
        Err(CallError::Failed(PbxError::NotFound)) => PbxResult::NotFound,
        Err(CallError::Failed(PbxError::Rejected(_))) => PbxResult::Rejected,
        Err(CallError::Failed(PbxError::Configuration { .. })) => PbxResult::Configuration,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(endpoint: PbxEndpoint, code: i64) -> PbxResult {
        result_class::<()>(&Err(CallError::from_errcode(endpoint, code, "X".into())))
    }

    #[test]
    fn errcodes_are_counted_by_what_the_worker_does_about_them() {
        use PbxEndpoint::*;
        assert_eq!(class(MessageSessionGet, 60001), PbxResult::NotFound);
        assert_eq!(class(MessageSessionGet, 10004), PbxResult::TokenExpired);
        assert_eq!(class(MessageSessionGet, 70082), PbxResult::Transient);
        assert_eq!(class(MessageSessionGet, 40001), PbxResult::Rejected);
        assert_eq!(class(GetToken, -1), PbxResult::Configuration);
        assert_eq!(class(GetToken, 40002), PbxResult::Rejected);
        assert_eq!(class(DelToken, 10004), PbxResult::TokenExpired);
        assert_eq!(class(MessageSessionQuery, 10001), PbxResult::Unsupported);
        assert_eq!(class(MessageSessionGet, 10001), PbxResult::Configuration);
    }
}
