//! The PBX as the pipeline's `SessionSource`: batches of sessions through
//! `message_session/query` where the PBX serves it (`query`), each session
//! alone through `message_session/get` otherwise, with the client's token,
//! concurrency cap and retries; "not found" (only `get` says it) becomes
//! `Answer::Missing`, every other error a `FetchError`.

use futures_util::future::join_all;

use super::{PbxClient, PbxError};
use crate::pipeline::SessionSource;
use crate::processing::{Answer, FetchError};
use crate::session::SessionId;

impl PbxClient {
    /// Fetches one session as an answer: found, or missing, stamped with
    /// when the request that got it was sent.
    pub async fn answer(&self, id: SessionId) -> Result<Answer, PbxError> {
        self.fetch_answer(id).await
    }
}

impl From<PbxError> for FetchError {
    fn from(e: PbxError) -> Self {
        match e {
            PbxError::Transient(why) => FetchError::Transient(why.to_string()),
            e @ PbxError::Configuration { .. } => FetchError::Configuration(e.to_string()),
            // `answer` turns NotFound into an answer; should it ever escape,
            // the session is gone and retrying cannot help.
            e @ (PbxError::Rejected(_) | PbxError::NotFound) => FetchError::Rejected(e.to_string()),
        }
    }
}

/// `ids` in chunks of at most `query_batch`, each one `query` call (see
/// `query`), all at once within the client's cap.
impl SessionSource for PbxClient {
    async fn fetch(&self, ids: &[SessionId]) -> Vec<(SessionId, Result<Answer, FetchError>)> {
        join_all(
            ids.chunks(self.query_batch())
                .map(|chunk| self.answer_chunk(chunk)),
        )
        .await
        .into_iter()
        .flatten()
        .map(|(id, answer)| (id, answer.map_err(FetchError::from)))
        .collect()
    }
}
