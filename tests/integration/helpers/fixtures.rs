//! The test data every test shares: the PBX id, the webhook secret, a
//! message event as the PBX sends it.

use serde_json::Value;

/// The PBX id the worker under test is configured with.
pub const PBX: &str = "test-pbx";

/// The webhook secret every intake test signs with. The signatures in
/// `intake.rs` were computed from it independently with OpenSSL.
pub const WEBHOOK_SECRET: &str = "zD4kX9mQ2vL7pR1sT8wY3nB6cF0hJ5aE";

/// A message event as the PBX's webhook sends it.
pub fn new_message_event(session_id: i64) -> Value {
    serde_json::json!({"type": 30031, "sn": "3631A0000001", "msg": {"session_id": session_id, "msg_id": session_id * 10, "msg_type": 0}})
}
