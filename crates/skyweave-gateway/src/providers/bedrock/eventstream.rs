//! An incremental decoder of the AWS event-stream framing
//! (`application/vnd.amazon.eventstream`), fed with network chunks as they
//! arrive, the way [`crate::sse::SseParser`] is for server-sent events.
//!
//! One message on the wire:
//!
//! ```text
//! total length      u32 BE   the whole message, these 4 bytes and the trailing CRC included
//! headers length    u32 BE
//! prelude CRC       u32 BE   CRC32 of the 8 bytes above
//! headers           headers length bytes
//! payload           total length - headers length - 16 bytes
//! message CRC       u32 BE   CRC32 of every byte before it
//! ```
//!
//! A header is a name (`u8` length, then that many bytes of UTF-8), a value
//! type byte and the value: `0` true and `1` false (no bytes), `2` byte (i8),
//! `3` i16, `4` i32, `5` i64, `6` bytes and `7` string (each a `u16` length,
//! then the bytes), `8` timestamp (i64 milliseconds since the epoch), `9`
//! UUID (16 bytes). Integers are big-endian.
//!
//! Nothing unchecked is ever returned: a bad prelude or message CRC, a total
//! length below 16 bytes or above 16 MiB, a headers section that runs past the
//! message or a malformed header is an error, and the decoder stays failed
//! after one (the stream is then unusable: framing cannot be recovered).

// Wired by the bedrock provider (issue 3); until then only the tests use it.

use bytes::{Bytes, BytesMut};

/// Total length, headers length, prelude CRC.
const PRELUDE_LEN: usize = 12;
/// A prelude and a message CRC, no headers, no payload.
const MIN_MESSAGE_LEN: usize = PRELUDE_LEN + 4;
/// The largest message accepted.
pub(crate) const MAX_MESSAGE_LEN: usize = 16 * 1024 * 1024;
/// The largest headers section the format allows.
const MAX_HEADERS_LEN: usize = 128 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HeaderValue {
    Bool(bool),
    Byte(i8),
    Int16(i16),
    Int32(i32),
    Int64(i64),
    Bytes(Bytes),
    String(String),
    /// Milliseconds since the Unix epoch.
    Timestamp(i64),
    Uuid([u8; 16]),
}

/// One decoded, CRC-checked message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Message {
    pub(crate) headers: Vec<(String, HeaderValue)>,
    pub(crate) payload: Bytes,
}

impl Message {
    /// The first header of that name.
    pub(crate) fn header(&self, name: &str) -> Option<&HeaderValue> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, value)| value)
    }

    /// The first header of that name, if it is a string.
    pub(crate) fn header_str(&self, name: &str) -> Option<&str> {
        match self.header(name)? {
            HeaderValue::String(value) => Some(value),
            _ => None,
        }
    }

    /// `:message-type`: `event`, `exception` (a modeled error, named by
    /// `:exception-type`) or `error` (`:error-code`, `:error-message`).
    pub(crate) fn message_type(&self) -> Option<&str> {
        self.header_str(":message-type")
    }

    /// `:event-type` of an `event` message (`messageStart`, `contentBlockDelta` ...).
    pub(crate) fn event_type(&self) -> Option<&str> {
        self.header_str(":event-type")
    }

    /// `:exception-type` of an `exception` message (`throttlingException` ...).
    pub(crate) fn exception_type(&self) -> Option<&str> {
        self.header_str(":exception-type")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("an event-stream message declares {0} bytes, outside 16 bytes to 16 MiB")]
    Length(u32),
    #[error("an event-stream message's prelude CRC does not match")]
    PreludeCrc,
    #[error("an event-stream message's CRC does not match")]
    MessageCrc,
    #[error("an event-stream message's headers are malformed: {0}")]
    Headers(String),
}

/// Decodes a stream of event-stream messages from arbitrary chunks.
#[derive(Debug, Default)]
pub(crate) struct Decoder {
    buffer: BytesMut,
    failed: Option<DecodeError>,
}

impl Decoder {
    pub(crate) fn new() -> Decoder {
        Decoder::default()
    }

    /// Feeds bytes and returns the messages they complete. After an error
    /// every later call returns that error again (messages completed before
    /// the corrupt one in the same chunk are lost with it: the stream is
    /// broken either way).
    pub(crate) fn push(&mut self, chunk: &[u8]) -> Result<Vec<Message>, DecodeError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        self.buffer.extend_from_slice(chunk);
        let mut out = Vec::new();
        loop {
            match self.next_message() {
                Ok(Some(message)) => out.push(message),
                Ok(None) => return Ok(out),
                Err(error) => {
                    self.buffer = BytesMut::new();
                    self.failed = Some(error.clone());
                    return Err(error);
                }
            }
        }
    }

    /// True when bytes of an unfinished message are buffered: a stream that
    /// ends now was cut.
    pub(crate) fn has_partial(&self) -> bool {
        !self.buffer.is_empty()
    }

    fn next_message(&mut self) -> Result<Option<Message>, DecodeError> {
        // The prelude is checked as soon as it is complete, so that a
        // corrupt length is refused at once instead of waiting for up to
        // 4 GiB that will never come.
        let Some(prelude) = self.buffer.get(..PRELUDE_LEN) else {
            return Ok(None);
        };
        let total = be_u32(&prelude[0..4]);
        let headers_len = be_u32(&prelude[4..8]);
        if crc32fast::hash(&prelude[..8]) != be_u32(&prelude[8..12]) {
            return Err(DecodeError::PreludeCrc);
        }
        let total_len = total as usize;
        if !(MIN_MESSAGE_LEN..=MAX_MESSAGE_LEN).contains(&total_len) {
            return Err(DecodeError::Length(total));
        }
        let headers_len = headers_len as usize;
        if headers_len > total_len - MIN_MESSAGE_LEN || headers_len > MAX_HEADERS_LEN {
            return Err(DecodeError::Headers(format!(
                "{headers_len} bytes of headers do not fit in a message of {total_len} bytes"
            )));
        }
        if self.buffer.len() < total_len {
            return Ok(None);
        }
        let frame = self.buffer.split_to(total_len).freeze();
        let crc_at = total_len - 4;
        if crc32fast::hash(&frame[..crc_at]) != be_u32(&frame[crc_at..]) {
            return Err(DecodeError::MessageCrc);
        }
        let headers_end = PRELUDE_LEN + headers_len;
        let headers = parse_headers(&frame[PRELUDE_LEN..headers_end])?;
        Ok(Some(Message { headers, payload: frame.slice(headers_end..crc_at) }))
    }
}

fn be_u32(bytes: &[u8]) -> u32 {
    u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

/// Reads the headers section, which must be consumed exactly.
fn parse_headers(mut rest: &[u8]) -> Result<Vec<(String, HeaderValue)>, DecodeError> {
    let mut headers = Vec::new();
    while !rest.is_empty() {
        let name_len = usize::from(take(&mut rest, 1)?[0]);
        if name_len == 0 {
            return Err(DecodeError::Headers("a header has an empty name".into()));
        }
        let name = utf8(take(&mut rest, name_len)?, "a header name")?;
        let value_type = take(&mut rest, 1)?[0];
        let value = match value_type {
            0 => HeaderValue::Bool(true),
            1 => HeaderValue::Bool(false),
            2 => HeaderValue::Byte(i8::from_be_bytes(fixed(&mut rest)?)),
            3 => HeaderValue::Int16(i16::from_be_bytes(fixed(&mut rest)?)),
            4 => HeaderValue::Int32(i32::from_be_bytes(fixed(&mut rest)?)),
            5 => HeaderValue::Int64(i64::from_be_bytes(fixed(&mut rest)?)),
            6 | 7 => {
                let len = usize::from(u16::from_be_bytes(fixed(&mut rest)?));
                let bytes = take(&mut rest, len)?;
                if value_type == 6 {
                    HeaderValue::Bytes(Bytes::copy_from_slice(bytes))
                } else {
                    HeaderValue::String(utf8(bytes, "a string header value")?)
                }
            }
            8 => HeaderValue::Timestamp(i64::from_be_bytes(fixed(&mut rest)?)),
            9 => HeaderValue::Uuid(fixed(&mut rest)?),
            other => {
                return Err(DecodeError::Headers(format!(
                    "header `{name}` has the unknown value type {other}"
                )))
            }
        };
        headers.push((name, value));
    }
    Ok(headers)
}

fn take<'a>(rest: &mut &'a [u8], len: usize) -> Result<&'a [u8], DecodeError> {
    if rest.len() < len {
        return Err(DecodeError::Headers("a header runs past the headers section".into()));
    }
    let (head, tail) = rest.split_at(len);
    *rest = tail;
    Ok(head)
}

fn fixed<const N: usize>(rest: &mut &[u8]) -> Result<[u8; N], DecodeError> {
    let mut out = [0; N];
    out.copy_from_slice(take(rest, N)?);
    Ok(out)
}

fn utf8(bytes: &[u8], what: &str) -> Result<String, DecodeError> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| DecodeError::Headers(format!("{what} is not UTF-8")))
}

/// An encoder, for tests only: the gateway never sends event streams.
#[cfg(test)]
pub(crate) mod test_support {
    use super::HeaderValue;

    pub(crate) fn encode(headers: &[(String, HeaderValue)], payload: &[u8]) -> Vec<u8> {
        let mut encoded_headers = Vec::new();
        for (name, value) in headers {
            encoded_headers.push(u8::try_from(name.len()).expect("header names are short"));
            encoded_headers.extend_from_slice(name.as_bytes());
            match value {
                HeaderValue::Bool(true) => encoded_headers.push(0),
                HeaderValue::Bool(false) => encoded_headers.push(1),
                HeaderValue::Byte(v) => {
                    encoded_headers.push(2);
                    encoded_headers.extend_from_slice(&v.to_be_bytes());
                }
                HeaderValue::Int16(v) => {
                    encoded_headers.push(3);
                    encoded_headers.extend_from_slice(&v.to_be_bytes());
                }
                HeaderValue::Int32(v) => {
                    encoded_headers.push(4);
                    encoded_headers.extend_from_slice(&v.to_be_bytes());
                }
                HeaderValue::Int64(v) => {
                    encoded_headers.push(5);
                    encoded_headers.extend_from_slice(&v.to_be_bytes());
                }
                HeaderValue::Bytes(v) => {
                    encoded_headers.push(6);
                    let len = u16::try_from(v.len()).expect("header values are short");
                    encoded_headers.extend_from_slice(&len.to_be_bytes());
                    encoded_headers.extend_from_slice(v);
                }
                HeaderValue::String(v) => {
                    encoded_headers.push(7);
                    let len = u16::try_from(v.len()).expect("header values are short");
                    encoded_headers.extend_from_slice(&len.to_be_bytes());
                    encoded_headers.extend_from_slice(v.as_bytes());
                }
                HeaderValue::Timestamp(v) => {
                    encoded_headers.push(8);
                    encoded_headers.extend_from_slice(&v.to_be_bytes());
                }
                HeaderValue::Uuid(v) => {
                    encoded_headers.push(9);
                    encoded_headers.extend_from_slice(v);
                }
            }
        }
        raw(&encoded_headers, payload)
    }

    /// A message with the given headers section taken as is, with correct
    /// length fields and CRCs.
    pub(crate) fn raw(headers: &[u8], payload: &[u8]) -> Vec<u8> {
        let total = u32::try_from(16 + headers.len() + payload.len()).expect("small message");
        let headers_len = u32::try_from(headers.len()).expect("small headers");
        let mut out = Vec::with_capacity(total as usize);
        out.extend_from_slice(&total.to_be_bytes());
        out.extend_from_slice(&headers_len.to_be_bytes());
        out.extend_from_slice(&crc32fast::hash(&out).to_be_bytes());
        out.extend_from_slice(headers);
        out.extend_from_slice(payload);
        out.extend_from_slice(&crc32fast::hash(&out).to_be_bytes());
        out
    }

    /// An `event` message as ConverseStream sends one.
    pub(crate) fn event(event_type: &str, payload: &str) -> Vec<u8> {
        let headers = [
            (":event-type".to_string(), HeaderValue::String(event_type.into())),
            (":content-type".to_string(), HeaderValue::String("application/json".into())),
            (":message-type".to_string(), HeaderValue::String("event".into())),
        ];
        encode(&headers, payload.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{encode, event, raw};
    use super::*;

    fn decode_all(bytes: &[u8]) -> Result<Vec<Message>, DecodeError> {
        let mut decoder = Decoder::new();
        let out = decoder.push(bytes)?;
        assert!(!decoder.has_partial(), "bytes left over");
        Ok(out)
    }

    fn all_header_types() -> Vec<(String, HeaderValue)> {
        vec![
            ("t".into(), HeaderValue::Bool(true)),
            ("f".into(), HeaderValue::Bool(false)),
            ("byte".into(), HeaderValue::Byte(-7)),
            ("short".into(), HeaderValue::Int16(-300)),
            ("int".into(), HeaderValue::Int32(70_000)),
            ("long".into(), HeaderValue::Int64(-5_000_000_000)),
            ("bytes".into(), HeaderValue::Bytes(Bytes::from_static(b"\x00\xff"))),
            ("string".into(), HeaderValue::String("héllo".into())),
            ("time".into(), HeaderValue::Timestamp(1_700_000_000_000)),
            ("uuid".into(), HeaderValue::Uuid(*b"0123456789abcdef")),
        ]
    }

    #[test]
    fn empty_message_matches_the_published_layout() {
        // The smallest message: 16 bytes, no headers, no payload. Both CRCs
        // are the values the AWS event-stream reference gives for it.
        let bytes = [
            0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x05, 0xc2, 0x48, 0xeb, 0x7d, 0x98,
            0xc8, 0xff,
        ];
        assert_eq!(raw(&[], &[]), bytes);
        let messages = decode_all(&bytes).unwrap();
        assert_eq!(messages, vec![Message { headers: vec![], payload: Bytes::new() }]);
    }

    #[test]
    fn every_header_type_round_trips() {
        let headers = all_header_types();
        let bytes = encode(&headers, b"{\"p\":1}");
        let messages = decode_all(&bytes).unwrap();
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].headers, headers);
        assert_eq!(messages[0].payload.as_ref(), b"{\"p\":1}");
        assert_eq!(messages[0].header_str("string"), Some("héllo"));
        assert_eq!(messages[0].header_str("int"), None, "not a string");
        assert_eq!(messages[0].header("long"), Some(&HeaderValue::Int64(-5_000_000_000)));
    }

    #[test]
    fn message_type_helpers() {
        let messages = decode_all(&event("contentBlockDelta", "{}")).unwrap();
        assert_eq!(messages[0].message_type(), Some("event"));
        assert_eq!(messages[0].event_type(), Some("contentBlockDelta"));
        assert_eq!(messages[0].exception_type(), None);
        let exception = encode(
            &[
                (":message-type".into(), HeaderValue::String("exception".into())),
                (":exception-type".into(), HeaderValue::String("throttlingException".into())),
            ],
            b"{\"message\":\"slow down\"}",
        );
        let messages = decode_all(&exception).unwrap();
        assert_eq!(messages[0].message_type(), Some("exception"));
        assert_eq!(messages[0].exception_type(), Some("throttlingException"));
    }

    #[test]
    fn byte_at_a_time_and_partial_state() {
        let mut bytes = event("messageStart", r#"{"role":"assistant"}"#);
        let first_len = bytes.len();
        bytes.extend(event("messageStop", r#"{"stopReason":"end_turn"}"#));
        let mut decoder = Decoder::new();
        let mut out = Vec::new();
        for (i, byte) in bytes.iter().enumerate() {
            out.extend(decoder.push(&[*byte]).unwrap());
            let fed = i + 1;
            let at_boundary = fed == first_len || fed == bytes.len();
            assert_eq!(decoder.has_partial(), !at_boundary, "after {fed} bytes");
            assert_eq!(out.len(), usize::from(fed >= first_len) + usize::from(fed == bytes.len()));
        }
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].event_type(), Some("messageStop"));
    }

    #[test]
    fn corrupt_frames_are_errors_never_data() {
        let good = event("contentBlockDelta", r#"{"delta":{"text":"hi"}}"#);

        let mut bad_prelude = good.clone();
        bad_prelude[9] ^= 0x01;
        assert_eq!(decode_all(&bad_prelude), Err(DecodeError::PreludeCrc));

        let mut bad_payload = good.clone();
        let at = bad_payload.len() - 6;
        bad_payload[at] ^= 0x20;
        assert_eq!(decode_all(&bad_payload), Err(DecodeError::MessageCrc));

        let mut bad_crc = good.clone();
        let last = bad_crc.len() - 1;
        bad_crc[last] ^= 0xff;
        assert_eq!(decode_all(&bad_crc), Err(DecodeError::MessageCrc));

        // A good message, then a corrupt one: the first is delivered, then
        // the error, and the decoder stays failed.
        let mut decoder = Decoder::new();
        assert_eq!(decoder.push(&good).unwrap().len(), 1);
        assert_eq!(decoder.push(&bad_payload), Err(DecodeError::MessageCrc));
        assert_eq!(decoder.push(&good), Err(DecodeError::MessageCrc));
        // In one chunk, the error wins.
        let mut stream = good.clone();
        stream.extend_from_slice(&bad_payload);
        assert_eq!(Decoder::new().push(&stream), Err(DecodeError::MessageCrc));
    }

    /// A prelude with a valid CRC, for length checks.
    fn prelude(total: u32, headers_len: u32) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&total.to_be_bytes());
        out.extend_from_slice(&headers_len.to_be_bytes());
        out.extend_from_slice(&crc32fast::hash(&out).to_be_bytes());
        out
    }

    #[test]
    fn lengths_out_of_bounds_are_refused_from_the_prelude_alone() {
        assert_eq!(Decoder::new().push(&prelude(15, 0)), Err(DecodeError::Length(15)));
        let too_big = u32::try_from(MAX_MESSAGE_LEN + 1).unwrap();
        assert_eq!(decode_all(&prelude(too_big, 0)), Err(DecodeError::Length(too_big)));
        assert_eq!(decode_all(&prelude(u32::MAX, 0)), Err(DecodeError::Length(u32::MAX)));
        assert!(matches!(decode_all(&prelude(20, 5)), Err(DecodeError::Headers(_))));
        // The largest message is accepted (its prelude at least).
        let max = u32::try_from(MAX_MESSAGE_LEN).unwrap();
        let mut decoder = Decoder::new();
        assert_eq!(decoder.push(&prelude(max, 0)), Ok(vec![]));
        assert!(decoder.has_partial());
    }

    #[test]
    fn malformed_headers_with_valid_crcs_are_errors() {
        let cases: &[&[u8]] = &[
            b"\x00\x00",                  // empty name
            b"\x05ab",                    // name past the end
            b"\x01a",                     // no value type
            b"\x01a\x0a",                 // unknown value type
            b"\x01a\x04\x00\x00",         // i32 cut short
            b"\x01a\x07\x00\x05abc",      // string past the end
            b"\x01a\x07\x00\x02\xff\xfe", // string not UTF-8
            b"\x02\xff\xfe\x00",          // name not UTF-8
            b"\x01a\x09\x00\x01\x02\x03", // uuid cut short
        ];
        for headers in cases {
            let result = decode_all(&raw(headers, b"payload"));
            assert!(matches!(result, Err(DecodeError::Headers(_))), "{headers:?}: {result:?}");
        }
    }
}

/// Property tests: splitting never changes what is decoded, garbage never
/// panics, and a corrupted byte is always caught.
#[cfg(test)]
mod fuzz {
    use super::test_support::{encode, raw};
    use super::*;
    use proptest::prelude::*;

    fn header_value() -> impl Strategy<Value = HeaderValue> {
        prop_oneof![
            any::<bool>().prop_map(HeaderValue::Bool),
            any::<i8>().prop_map(HeaderValue::Byte),
            any::<i16>().prop_map(HeaderValue::Int16),
            any::<i32>().prop_map(HeaderValue::Int32),
            any::<i64>().prop_map(HeaderValue::Int64),
            proptest::collection::vec(any::<u8>(), 0..40)
                .prop_map(|v| HeaderValue::Bytes(Bytes::from(v))),
            ".{0,20}".prop_map(HeaderValue::String),
            any::<i64>().prop_map(HeaderValue::Timestamp),
            any::<[u8; 16]>().prop_map(HeaderValue::Uuid),
        ]
    }

    fn message() -> impl Strategy<Value = Message> {
        (
            proptest::collection::vec(("[:a-z-]{1,16}", header_value()), 0..6),
            proptest::collection::vec(any::<u8>(), 0..300),
        )
            .prop_map(|(headers, payload)| Message { headers, payload: Bytes::from(payload) })
    }

    fn encode_message(message: &Message) -> Vec<u8> {
        encode(&message.headers, &message.payload)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_split_decodes_identically(
            messages in proptest::collection::vec(message(), 1..5),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let stream: Vec<u8> = messages.iter().flat_map(encode_message).collect();
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
            cuts.push(0);
            cuts.push(stream.len());
            cuts.sort_unstable();
            let mut decoder = Decoder::new();
            let mut out = Vec::new();
            for pair in cuts.windows(2) {
                out.extend(decoder.push(&stream[pair[0]..pair[1]]).unwrap());
            }
            prop_assert!(!decoder.has_partial());
            prop_assert_eq!(out, messages);
        }

        #[test]
        fn random_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..600),
            cut in any::<prop::sample::Index>(),
        ) {
            let at = cut.index(bytes.len() + 1);
            let mut decoder = Decoder::new();
            let mut out = Vec::new();
            out.extend(decoder.push(&bytes[..at]).unwrap_or_default());
            out.extend(decoder.push(&bytes[at..]).unwrap_or_default());
            // Random bytes essentially never carry two matching CRCs.
            prop_assert!(out.is_empty());
        }

        #[test]
        fn random_headers_with_valid_crcs_never_panic(
            headers in proptest::collection::vec(any::<u8>(), 0..200),
            payload in proptest::collection::vec(any::<u8>(), 0..50),
        ) {
            match Decoder::new().push(&raw(&headers, &payload)) {
                Ok(out) => {
                    prop_assert_eq!(out.len(), 1);
                    prop_assert_eq!(out[0].payload.as_ref(), payload.as_slice());
                }
                Err(error) => prop_assert!(matches!(error, DecodeError::Headers(_))),
            }
        }

        #[test]
        fn any_flipped_byte_is_an_error(
            message in message(),
            at in any::<prop::sample::Index>(),
            mask in 1u8..=255,
        ) {
            let mut bytes = encode_message(&message);
            let at = at.index(bytes.len());
            bytes[at] ^= mask;
            // CRC32 detects every error burst of up to 32 bits, so a single
            // changed byte is always caught: in the prelude as soon as the
            // prelude is complete, elsewhere once the message is.
            let result = Decoder::new().push(&bytes);
            prop_assert!(result.is_err(), "byte {} ^ {:#04x} decoded: {:?}", at, mask, result);
        }
    }
}
