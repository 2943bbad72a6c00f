//! The `x-…` headers the enricher writes on messages and reads back: their
//! names, and reading their values off a message's properties. It never
//! decides what a value means for a delivery.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, LongString};

/// Header carrying the reason a message was dead-lettered (or, on the retry
/// queue, why its last attempt failed).
pub const ERROR_HEADER: &str = "x-enricher-error";
/// Header counting the attempts already made at a message.
pub const ATTEMPT_HEADER: &str = "x-enricher-attempts";
/// Header a producer may set: when it published the event, in Unix
/// milliseconds (for the publish→commit lag).
pub const PUBLISHED_AT_HEADER: &str = "x-published-at-ms";
/// Header on dead letters: the SHA-256 (hex) of the body, a stable key for
/// dropping the rare duplicate (a publish whose confirm was lost).
pub const DIGEST_HEADER: &str = "x-enricher-body-sha256";

pub(super) fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

/// An integer header as a `u32`, 0 when absent or not a usable integer.
pub(super) fn header_u32(properties: &BasicProperties, name: &str) -> u32 {
    header_i64(properties, name)
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(0)
}

/// An integer header, if present as an integer.
pub(super) fn header_i64(properties: &BasicProperties, name: &str) -> Option<i64> {
    Some(match header(properties, name)? {
        AMQPValue::ShortShortInt(v) => i64::from(*v),
        AMQPValue::ShortShortUInt(v) => i64::from(*v),
        AMQPValue::ShortInt(v) => i64::from(*v),
        AMQPValue::ShortUInt(v) => i64::from(*v),
        AMQPValue::LongInt(v) => i64::from(*v),
        AMQPValue::LongUInt(v) => i64::from(*v),
        AMQPValue::LongLongInt(v) => *v,
        AMQPValue::Timestamp(v) => i64::try_from(*v).ok()?,
        _ => return None,
    })
}

/// A string header, if present as a string (bytes that are not UTF-8 are
/// replaced).
pub(super) fn header_string(properties: &BasicProperties, name: &str) -> Option<String> {
    match header(properties, name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

fn header<'a>(properties: &'a BasicProperties, name: &str) -> Option<&'a AMQPValue> {
    properties.headers().as_ref()?.inner().get(name)
}

#[cfg(test)]
mod tests {
    use lapin::types::{FieldTable, ShortString};

    use super::*;

    fn with_header(name: &str, value: AMQPValue) -> BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert(ShortString::from(name), value);
        BasicProperties::default().with_headers(headers)
    }

    #[test]
    fn an_attempt_count_is_read_from_any_integer_type() {
        for value in [
            AMQPValue::ShortShortUInt(3),
            AMQPValue::LongInt(3),
            AMQPValue::LongLongInt(3),
        ] {
            assert_eq!(
                header_u32(&with_header(ATTEMPT_HEADER, value), ATTEMPT_HEADER),
                3
            );
        }
    }

    #[test]
    fn a_missing_or_unusable_attempt_count_is_zero() {
        assert_eq!(header_u32(&BasicProperties::default(), ATTEMPT_HEADER), 0);
        let negative = with_header(ATTEMPT_HEADER, AMQPValue::LongLongInt(-1));
        assert_eq!(header_u32(&negative, ATTEMPT_HEADER), 0);
        let text = with_header(ATTEMPT_HEADER, long_string("3"));
        assert_eq!(header_u32(&text, ATTEMPT_HEADER), 0);
    }

    #[test]
    fn an_error_header_is_read_as_text() {
        let properties = with_header(ERROR_HEADER, long_string("malformed"));
        assert_eq!(
            header_string(&properties, ERROR_HEADER).as_deref(),
            Some("malformed")
        );
        assert_eq!(header_string(&properties, DIGEST_HEADER), None);
    }
}
