//! The PBX as the pipeline's `SessionSource`: `message_session/get` per
//! session, with the client's token, concurrency cap and retries; "not
//! found" becomes `Answer::Missing`, every other error a `FetchError`.

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

impl SessionSource for PbxClient {
    async fn fetch(&self, ids: &[SessionId]) -> Vec<(SessionId, Result<Answer, FetchError>)> {
        join_all(
            ids.iter()
                .map(|&id| async move { (id, self.answer(id).await.map_err(FetchError::from)) }),
        )
        .await
    }
}
