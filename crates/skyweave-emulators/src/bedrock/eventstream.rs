//! The `application/vnd.amazon.eventstream` binary framing, encoder side,
//! written from the Smithy "Amazon Event Stream Specification".
//!
//! A message is, big-endian throughout:
//!
//! ```text
//! u32 total_length      (the whole message, these 4 bytes and the final CRC included)
//! u32 headers_length
//! u32 prelude_crc       CRC32 of the 8 bytes above
//! headers               headers_length bytes
//! payload               total_length - headers_length - 16 bytes
//! u32 message_crc       CRC32 of everything before it (prelude CRC included)
//! ```
//!
//! and a header is `u8 name_len, name, u8 type, value`; the emulator only
//! writes type 7 (string: `u16 len, utf-8 bytes`). CRC32 is the ISO-HDLC /
//! IEEE 802.3 one (reflected polynomial `0xEDB88320`, init and final xor
//! `0xFFFFFFFF`), the same as zlib's `crc32`.

/// The media type of an event stream.
pub const CONTENT_TYPE: &str = "application/vnd.amazon.eventstream";

/// Bytes before the headers: total length, headers length, prelude CRC.
pub const PRELUDE_LEN: usize = 12;

/// Header value type 7: a UTF-8 string with a `u16` length prefix.
pub const HEADER_TYPE_STRING: u8 = 7;

const CRC_TABLE: [u32; 256] = crc_table();

const fn crc_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

/// CRC32 (IEEE) of `data`.
pub fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in data {
        c = CRC_TABLE[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8);
    }
    c ^ 0xFFFF_FFFF
}

/// One message with string headers (`(name, value)`, written in the order
/// given) and `payload`.
///
/// Panics if a header name is empty or longer than 255 bytes or a value is
/// longer than 32,767 bytes (the emulator only writes short constants).
pub fn encode_message(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let headers_len: usize = headers.iter().map(|(k, v)| 1 + k.len() + 1 + 2 + v.len()).sum();
    let total = PRELUDE_LEN + headers_len + payload.len() + 4;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&u32_len(total).to_be_bytes());
    out.extend_from_slice(&u32_len(headers_len).to_be_bytes());
    let prelude_crc = crc32(&out);
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    for (name, value) in headers {
        assert!(!name.is_empty() && name.len() <= 255, "bad event-stream header name {name:?}");
        assert!(value.len() <= 0x7FFF, "event-stream header value too long");
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
        out.push(HEADER_TYPE_STRING);
        out.extend_from_slice(&(value.len() as u16).to_be_bytes());
        out.extend_from_slice(value.as_bytes());
    }
    out.extend_from_slice(payload);
    let message_crc = crc32(&out);
    out.extend_from_slice(&message_crc.to_be_bytes());
    out
}

fn u32_len(n: usize) -> u32 {
    u32::try_from(n).expect("event-stream message longer than 4 GiB")
}

/// An `event` message: `:event-type`, `:content-type: application/json`,
/// `:message-type: event`.
pub fn event_message(event_type: &str, json: &[u8]) -> Vec<u8> {
    encode_message(
        &[
            (":event-type", event_type),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        json,
    )
}

/// A modeled error message: `:exception-type`, `:content-type:
/// application/json`, `:message-type: exception`; the payload is
/// `{"message": ...}`.
pub fn exception_message(exception_type: &str, message: &str) -> Vec<u8> {
    let payload =
        serde_json::to_vec(&serde_json::json!({ "message": message })).unwrap_or_default();
    encode_message(
        &[
            (":exception-type", exception_type),
            (":content-type", "application/json"),
            (":message-type", "exception"),
        ],
        &payload,
    )
}

/// Make the message CRC (the last 4 bytes) wrong; prelude and data intact.
pub fn corrupt_message_crc(message: &mut [u8]) {
    if let Some(last) = message.last_mut() {
        *last ^= 0xFF;
    }
}

/// Make the prelude CRC (bytes 8..12) wrong. The message CRC is recomputed
/// over the altered prelude, so only the prelude check can catch it.
pub fn corrupt_prelude_crc(message: &mut [u8]) {
    if message.len() < PRELUDE_LEN + 4 {
        return;
    }
    message[8] ^= 0xFF;
    let end = message.len() - 4;
    let crc = crc32(&message[..end]);
    message[end..].copy_from_slice(&crc.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_check_values() {
        // The standard check value of CRC-32/ISO-HDLC.
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"The quick brown fox jumps over the lazy dog"), 0x414F_A339);
    }

    #[test]
    fn message_layout_follows_the_spec() {
        let m = encode_message(&[("a", "bc")], b"{}");
        // 12 prelude + (1+1+1+2+2)=7 headers + 2 payload + 4 crc
        assert_eq!(m.len(), 25);
        assert_eq!(&m[0..4], &25u32.to_be_bytes());
        assert_eq!(&m[4..8], &7u32.to_be_bytes());
        assert_eq!(&m[8..12], &crc32(&m[0..8]).to_be_bytes());
        assert_eq!(&m[12..19], &[1, b'a', 7, 0, 2, b'b', b'c']);
        assert_eq!(&m[19..21], b"{}");
        assert_eq!(&m[21..25], &crc32(&m[0..21]).to_be_bytes());
    }

    #[test]
    fn an_empty_message_is_16_bytes() {
        // Known-answer from the AWS event-stream test vectors ("empty_message"):
        // 00000010 00000000 05c248eb 7d98c8ff
        let m = encode_message(&[], b"");
        assert_eq!(m, [0, 0, 0, 0x10, 0, 0, 0, 0, 0x05, 0xc2, 0x48, 0xeb, 0x7d, 0x98, 0xc8, 0xff]);
    }

    #[test]
    fn corruption_touches_only_one_checksum() {
        let good = event_message("messageStop", br#"{"stopReason":"end_turn"}"#);
        let mut bad = good.clone();
        corrupt_message_crc(&mut bad);
        assert_eq!(good[..good.len() - 4], bad[..bad.len() - 4]);
        assert_ne!(good[good.len() - 4..], bad[bad.len() - 4..]);

        let mut bad = good.clone();
        corrupt_prelude_crc(&mut bad);
        assert_ne!(&bad[8..12], &crc32(&bad[0..8]).to_be_bytes());
        let end = bad.len() - 4;
        assert_eq!(&bad[end..], &crc32(&bad[..end]).to_be_bytes());
    }
}
