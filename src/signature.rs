//! Webhook signatures: Yeastar signs each webhook delivery with
//! `X-Signature: Base64(HMAC-SHA256(secret, raw body))`. This module checks
//! one, in constant time, over the exact bytes received. It never logs or
//! returns the secret or the expected signature.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::secret::Secret;

/// The header the PBX puts the signature in.
pub const SIGNATURE_HEADER: &str = "x-signature";

/// Why a delivery's signature was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No `X-Signature` header (or an empty one).
    #[error("no X-Signature header")]
    Missing,
    /// A header that is not Base64, or does not match the body.
    #[error("X-Signature does not match the body")]
    Mismatch,
}

/// Checks `header` (the `X-Signature` value, if any) against `body` signed
/// with `secret`. A `sha256=` prefix is tolerated, as one integration sends
/// it. The comparison is constant-time (`Mac::verify_slice`).
pub fn verify(secret: &Secret, body: &[u8], header: Option<&[u8]>) -> Result<(), SignatureError> {
    let header = header
        .map(<[u8]>::trim_ascii)
        .filter(|h| !h.is_empty())
        .ok_or(SignatureError::Missing)?;
    let encoded = header.strip_prefix(b"sha256=").unwrap_or(header);
    // A tag of the wrong length or alphabet can never match; refusing it
    // before the MAC leaks nothing about the secret.
    let tag = STANDARD
        .decode(encoded)
        .map_err(|_| SignatureError::Mismatch)?;
    // HMAC takes a key of any length, so this never fails; if it did,
    // refusing the delivery is the safe side.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes())
        .map_err(|_| SignatureError::Mismatch)?;
    mac.update(body);
    mac.verify_slice(&tag).map_err(|_| SignatureError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Vectors computed independently with OpenSSL 3.0:
    //   printf '%s' "$body" | openssl dgst -sha256 -hmac "$secret" -binary | base64
    const SECRET: &str = "zD4kX9mQ2vL7pR1sT8wY3nB6cF0hJ5aE";
    const BODY: &str = r#"{"type":30031,"sn":"3631A0000001","msg":{"session_id":2862,"msg_id":28620,"msg_type":0}}"#;
    const SIGNATURE: &str = "zUOeXIFAauX8vPick+yLUMlPE3ZNLc/HS3w1+sm9qY8=";
    const STRING_MSG_BODY: &str = r#"{"type":30031,"sn":"3631A0000001","msg":"{\"session_id\":4211,\"msg_id\":\"42110\",\"msg_type\":0,\"msg_body\":\"Hi, is my order shipped?\"}"}"#;
    const STRING_MSG_SIGNATURE: &str = "oQ9TQ//SRFUw0+qJjzxzWdy72kx9X1C6xxnsXPPTp6o=";
    const EMPTY_BODY_SIGNATURE: &str = "kVhytT9mhobPyu8UowxUYrhBtKG+XwCqd0D1ZHWRcfU=";
    /// BODY signed with "another-secret-of-32-characters!".
    const OTHER_SECRET_SIGNATURE: &str = "raxrzmKtQ2ftfxBkFXU+B+jVBBEmzxYp42HwSYbuB0Q=";

    fn check(body: &str, header: Option<&str>) -> Result<(), SignatureError> {
        verify(
            &Secret::new(SECRET),
            body.as_bytes(),
            header.map(str::as_bytes),
        )
    }

    #[test]
    fn a_body_signed_with_the_secret_is_accepted() {
        assert_eq!(check(BODY, Some(SIGNATURE)), Ok(()));
        assert_eq!(check(STRING_MSG_BODY, Some(STRING_MSG_SIGNATURE)), Ok(()));
        assert_eq!(check("", Some(EMPTY_BODY_SIGNATURE)), Ok(()));
    }

    #[test]
    fn a_sha256_prefix_and_surrounding_blanks_are_tolerated() {
        assert_eq!(check(BODY, Some(&format!("sha256={SIGNATURE}"))), Ok(()));
        assert_eq!(check(BODY, Some(&format!(" {SIGNATURE}\t"))), Ok(()));
    }

    #[test]
    fn a_tampered_body_is_refused() {
        let tampered = BODY.replace("2862", "2863");
        assert_eq!(
            check(&tampered, Some(SIGNATURE)),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            check(&format!("{BODY} "), Some(SIGNATURE)),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn a_signature_made_with_another_secret_is_refused() {
        assert_eq!(
            check(BODY, Some(OTHER_SECRET_SIGNATURE)),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn a_missing_or_empty_header_is_missing() {
        assert_eq!(check(BODY, None), Err(SignatureError::Missing));
        assert_eq!(check(BODY, Some("  ")), Err(SignatureError::Missing));
    }

    #[test]
    fn a_header_that_is_not_the_signature_is_refused() {
        for bad in [
            "not base64!",
            "zUOeXIFAauX8vPick+yLUMlPE3ZNLc/HS3w1+sm9qY8",
            "zUOeXIFAauX8vPick+yLUMlPE3ZNLc/HS3w1+sm9qY8=zUOe",
            "c2hvcnQ=",
            "sha256=",
            "SHA256=zUOeXIFAauX8vPick+yLUMlPE3ZNLc/HS3w1+sm9qY8=",
        ] {
            assert_eq!(
                check(BODY, Some(bad)),
                Err(SignatureError::Mismatch),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_hex_signature_is_refused() {
        // The scheme is Base64; a hex digest of the right MAC is still wrong.
        let hex: String = STANDARD
            .decode(SIGNATURE)
            .unwrap()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(check(BODY, Some(&hex)), Err(SignatureError::Mismatch));
    }
}
