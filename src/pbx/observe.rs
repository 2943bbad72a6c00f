//! Metrics of the PBX calls: times each request and counts it by endpoint
//! and result class (the errcode mapped as `PbxError` maps it). Never
//! changes an answer.

use std::time::Instant;

use serde_json::Value;

use super::PbxError;
use super::api::Refusal;
use crate::metrics::{self, PbxEndpoint, PbxResult};

/// Awaits one request and records it.
pub(super) async fn observed(
    endpoint: PbxEndpoint,
    request: impl Future<Output = Result<Value, Refusal>>,
) -> Result<Value, Refusal> {
    let started = Instant::now();
    let answer = request.await;
    metrics::get().pbx_request(endpoint, result_class(endpoint, &answer), started.elapsed());
    answer
}

fn result_class(endpoint: PbxEndpoint, answer: &Result<Value, Refusal>) -> PbxResult {
    match answer {
        Ok(_) => PbxResult::Ok,
        Err(Refusal::Errcode(10004, _)) => PbxResult::TokenExpired,
        Err(Refusal::Errcode(60001 | 40002, _)) if endpoint == PbxEndpoint::MessageSessionGet => {
            PbxResult::NotFound
        }
        Err(Refusal::Errcode(code, msg)) => error_class(&PbxError::from_errcode(*code, msg)),
        Err(Refusal::Other(e)) => error_class(e),
    }
}

fn error_class(error: &PbxError) -> PbxResult {
    match error {
        PbxError::Transient(_) => PbxResult::Transient,
        PbxError::NotFound => PbxResult::NotFound,
        PbxError::Rejected(_) => PbxResult::Rejected,
        PbxError::Configuration { .. } => PbxResult::Configuration,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(endpoint: PbxEndpoint, code: i64) -> PbxResult {
        result_class(endpoint, &Err(Refusal::Errcode(code, "X".into())))
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
    }
}
