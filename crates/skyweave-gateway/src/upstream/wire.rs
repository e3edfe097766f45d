//! HTTP/1.1 on the wire, without IO (RFC 9112): the request head the client
//! writes, the response head it reads and how the body that follows is
//! framed, and an incremental decoder of chunked bodies.
//!
//! Everything here is fed bytes and answers what they mean, so it is tested
//! and fuzzed without sockets; `upstream.rs` does the reading and writing.

/// Largest response head (status line and headers) taken from an upstream.
pub(crate) const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most headers in a response head.
const MAX_HEADERS: usize = 100;
/// Longest chunk-size line, extensions included, and longest trailer section.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = 64 * 1024;

/// Why an upstream's bytes are not an HTTP/1.1 response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum WireError {
    #[error("the upstream's response head is not HTTP/1.x: {0}")]
    Head(&'static str),
    #[error("the upstream's response head is larger than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("the upstream's response has more than {MAX_HEADERS} headers")]
    TooManyHeaders,
    #[error("the upstream's response has an invalid content-length")]
    ContentLength,
    #[error("the upstream answered 101 Switching Protocols to a plain request")]
    Upgrade,
    #[error("the upstream's chunked body is malformed: {0}")]
    Chunk(&'static str),
}

/// How the body after a response head ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body (204, 304, 1xx).
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Everything until the upstream closes the connection.
    UntilClose,
}

/// A parsed response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Head {
    pub(crate) status: u16,
    pub(crate) framing: Framing,
    /// The connection may carry another request after this response.
    pub(crate) keep_alive: bool,
    /// Bytes of the head, through its final empty line.
    pub(crate) len: usize,
}

/// Parses a response head from the start of `buf`. `Ok(None)`: more bytes
/// are needed. An informational (1xx) head is returned like any other; the
/// caller skips it and parses the next.
pub(crate) fn parse_head(buf: &[u8]) -> Result<Option<Head>, WireError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
            return Err(WireError::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(WireError::TooManyHeaders),
        Err(error) => return Err(WireError::Head(head_error(error))),
    };
    if len > MAX_HEAD_BYTES {
        return Err(WireError::HeadTooLarge);
    }
    let status = response.code.ok_or(WireError::Head("no status code"))?;
    let http11 = response.version == Some(1);

    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_encoding = false;
    let mut close = false;
    let mut keep_alive = false;
    for header in response.headers.iter() {
        let value = header.value;
        if header.name.eq_ignore_ascii_case("content-length") {
            for part in value.split(|b| *b == b',') {
                let n = digits(trim(part)).ok_or(WireError::ContentLength)?;
                if length.is_some_and(|seen| seen != n) {
                    return Err(WireError::ContentLength);
                }
                length = Some(n);
            }
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = true;
            // Only the last coding says whether the body is chunked.
            let last = value.rsplit(|b| *b == b',').next().unwrap_or_default();
            chunked = trim(last).eq_ignore_ascii_case(b"chunked");
        } else if header.name.eq_ignore_ascii_case("connection") {
            for token in value.split(|b| *b == b',') {
                let token = trim(token);
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                }
            }
        }
    }
    // `close` wins over `keep-alive`; HTTP/1.0 stays open only when asked.
    close |= !http11 && !keep_alive;

    let framing = if status == 101 {
        return Err(WireError::Upgrade);
    } else if (100..200).contains(&status) || status == 204 || status == 304 {
        Framing::Empty
    } else if transfer_encoding {
        // A length beside a transfer coding is ignored (RFC 9112 section
        // 6.3), and the connection not reused: the two disagree on where
        // the next response starts. So is a transfer coding in HTTP/1.0
        // (section 6.1).
        if length.is_some() || !http11 {
            close = true;
        }
        if chunked {
            Framing::Chunked
        } else {
            close = true;
            Framing::UntilClose
        }
    } else {
        match length {
            Some(n) => Framing::Length(n),
            None => {
                close = true;
                Framing::UntilClose
            }
        }
    };
    Ok(Some(Head { status, framing, keep_alive: !close, len }))
}

/// The value of the first header called `name` in a complete head, if it is
/// text.
pub(crate) fn header<'h>(head: &'h [u8], name: &str) -> Option<&'h str> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    response.parse(head).ok()?;
    let value = response.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name))?.value;
    std::str::from_utf8(value).ok()
}

/// Every header of a complete head, in order.
pub(crate) fn headers(head: &[u8]) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    if response.parse(head).is_err() {
        return map;
    }
    for header in response.headers.iter() {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(header.name.as_bytes()),
            http::HeaderValue::from_bytes(header.value),
        ) {
            map.append(name, value);
        }
    }
    map
}

fn head_error(error: httparse::Error) -> &'static str {
    match error {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status code",
        httparse::Error::Token => "invalid token",
        httparse::Error::Version => "invalid HTTP version",
        httparse::Error::TooManyHeaders => "too many headers",
    }
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| !matches!(b, b' ' | b'\t')).unwrap_or(bytes.len());
    let end = bytes.iter().rposition(|b| !matches!(b, b' ' | b'\t')).map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// A non-empty run of ASCII digits as a number, `None` on anything else or
/// on overflow.
fn digits(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() {
        return None;
    }
    bytes.iter().try_fold(0u64, |n, b| {
        if b.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

/// Appends a request head to `out`: request line, the `host` line, the
/// given header lines (each already `name: value\r\n`), the body's length
/// and the empty line. `target` is the path and query.
pub(crate) fn request_head(
    out: &mut Vec<u8>,
    method: &str,
    target: &str,
    host_line: &[u8],
    header_lines: &[u8],
    content_length: Option<usize>,
) {
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    out.extend_from_slice(host_line);
    out.extend_from_slice(header_lines);
    if let Some(length) = content_length {
        out.extend_from_slice(b"content-length: ");
        push_number(out, length as u64);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Decimal digits of `n`, without going through `fmt`.
fn push_number(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Where a chunked body's decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In a chunk-size line: the size so far, its digit count, whether
    /// whitespace after the digits or an extension has started, the line's
    /// length.
    Size {
        size: u64,
        digits: u8,
        gap: bool,
        extension: bool,
        line: usize,
    },
    /// Expecting the `\n` of a chunk-size line.
    SizeLf {
        size: u64,
    },
    /// Inside a chunk's data, with this much left.
    Data(u64),
    /// Expecting the `\r\n` after a chunk's data.
    DataCr,
    DataLf,
    /// In the trailer section after the last chunk: bytes of the current
    /// line, bytes of the whole section.
    Trailer {
        line: usize,
        total: usize,
    },
    TrailerLf {
        line: usize,
        total: usize,
    },
    Done,
}

/// An incremental decoder of a chunked body (RFC 9112 section 7.1), fed the
/// bytes as they arrive in any split.
#[derive(Debug, Clone)]
pub(crate) struct Chunked {
    state: State,
}

impl Default for Chunked {
    fn default() -> Chunked {
        Chunked { state: State::Size { size: 0, digits: 0, gap: false, extension: false, line: 0 } }
    }
}

impl Chunked {
    /// The last chunk and the trailer section have been read.
    pub(crate) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes from `input`, appending chunk data to `out`. Returns how many
    /// bytes of `input` were consumed: all of them, unless the body ends
    /// before (the rest belongs to whatever follows it) or `one_chunk` asks
    /// for no more than one chunk's data, so that a caller relays the body
    /// chunk by chunk as the upstream framed it.
    pub(crate) fn decode(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        one_chunk: bool,
    ) -> Result<usize, WireError> {
        let mut at = 0;
        while at < input.len() {
            // The next chunk's data would join this one's: stop before it.
            // The framing after a chunk (its CRLF, the next size line, the
            // last chunk and trailers) is consumed, so a body whose end is
            // already here is done with its last data.
            if one_chunk && matches!(self.state, State::Data(_)) && !out.is_empty() {
                break;
            }
            let byte = input[at];
            self.state = match self.state {
                State::Done => break,
                State::Data(left) => {
                    let take = (input.len() - at).min(usize::try_from(left).unwrap_or(usize::MAX));
                    out.extend_from_slice(&input[at..at + take]);
                    at += take;
                    let left = left - take as u64;
                    if left == 0 {
                        State::DataCr
                    } else {
                        State::Data(left)
                    }
                }
                State::Size { size, digits, gap, extension, line } => {
                    at += 1;
                    let line = line + 1;
                    if line > MAX_CHUNK_LINE {
                        return Err(WireError::Chunk("chunk-size line too long"));
                    }
                    match byte {
                        b'\r' if digits == 0 => return Err(WireError::Chunk("no chunk size")),
                        b'\r' => State::SizeLf { size },
                        b'\n' => return Err(WireError::Chunk("chunk-size line not ended by CRLF")),
                        _ if extension => {
                            if byte == b'\n' || (byte < b' ' && byte != b'\t') || byte == 0x7f {
                                return Err(WireError::Chunk("control byte in a chunk extension"));
                            }
                            State::Size { size, digits, gap, extension, line }
                        }
                        b';' if digits > 0 => {
                            State::Size { size, digits, gap, extension: true, line }
                        }
                        b' ' | b'\t' if digits > 0 => {
                            State::Size { size, digits, gap: true, extension, line }
                        }
                        _ if gap => {
                            return Err(WireError::Chunk("invalid chunk size"));
                        }
                        _ => {
                            let value = match byte {
                                b'0'..=b'9' => byte - b'0',
                                b'a'..=b'f' => byte - b'a' + 10,
                                b'A'..=b'F' => byte - b'A' + 10,
                                _ => return Err(WireError::Chunk("invalid chunk size")),
                            };
                            if digits == 16 {
                                return Err(WireError::Chunk("chunk size too large"));
                            }
                            State::Size {
                                size: size << 4 | u64::from(value),
                                digits: digits + 1,
                                gap,
                                extension,
                                line,
                            }
                        }
                    }
                }
                State::SizeLf { size } => {
                    at += 1;
                    if byte != b'\n' {
                        return Err(WireError::Chunk("chunk-size line not ended by CRLF"));
                    }
                    if size == 0 {
                        State::Trailer { line: 0, total: 0 }
                    } else {
                        State::Data(size)
                    }
                }
                State::DataCr => {
                    at += 1;
                    if byte != b'\r' {
                        return Err(WireError::Chunk("chunk data longer than its size"));
                    }
                    State::DataLf
                }
                State::DataLf => {
                    at += 1;
                    if byte != b'\n' {
                        return Err(WireError::Chunk("chunk data not ended by CRLF"));
                    }
                    State::Size { size: 0, digits: 0, gap: false, extension: false, line: 0 }
                }
                State::Trailer { line, total } => {
                    at += 1;
                    if total + 1 > MAX_TRAILERS {
                        return Err(WireError::Chunk("trailer section too large"));
                    }
                    match byte {
                        b'\r' => State::TrailerLf { line, total: total + 1 },
                        b'\n' => return Err(WireError::Chunk("trailer line not ended by CRLF")),
                        _ => State::Trailer { line: line + 1, total: total + 1 },
                    }
                }
                State::TrailerLf { line, total } => {
                    at += 1;
                    if byte != b'\n' {
                        return Err(WireError::Chunk("trailer line not ended by CRLF"));
                    }
                    if line == 0 {
                        State::Done
                    } else {
                        State::Trailer { line: 0, total }
                    }
                }
            };
        }
        Ok(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn head(text: &str) -> Head {
        parse_head(text.as_bytes()).unwrap().unwrap()
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let h = head("HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n");
        assert_eq!((h.status, h.framing, h.keep_alive), (200, Framing::Length(12), true));
        let h = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Chunked, true));
        let h = head("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Chunked, false), "TE wins, no reuse");
        let h = head("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::UntilClose, false));
        let h = head("HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::UntilClose, false));
        let h = head("HTTP/1.1 204 No Content\r\ncontent-length: 3\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Empty, true));
        let h = head("HTTP/1.1 100 Continue\r\n\r\n");
        assert_eq!((h.status, h.framing), (100, Framing::Empty));
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 4, 4\r\nConnection: Close\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Length(4), false));
        let h = head("HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n");
        assert!(!h.keep_alive, "HTTP/1.0 closes by default");
        let h = head("HTTP/1.0 200 OK\r\ncontent-length: 1\r\nconnection: keep-alive\r\n\r\n");
        assert!(h.keep_alive);
        let h =
            head("HTTP/1.0 200 OK\r\ncontent-length: 1\r\nconnection: close, keep-alive\r\n\r\n");
        assert!(!h.keep_alive, "close wins");
        let h =
            head("HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\nconnection: keep-alive\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Chunked, false), "TE in HTTP/1.0");
        let text = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        assert_eq!(head(text).len, text.len() - 2);
    }

    #[test]
    fn lying_heads_are_refused_by_name() {
        let refuse = |text: &str| parse_head(text.as_bytes()).unwrap_err().to_string();
        for bad in ["abc", "-1", "1 2", "", "99999999999999999999999"] {
            let text = format!("HTTP/1.1 200 OK\r\ncontent-length: {bad}\r\n\r\n");
            assert!(refuse(&text).contains("content-length"), "{bad}");
        }
        let two = "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n";
        assert!(refuse(two).contains("content-length"));
        assert!(refuse("HTTP/1.1 101 Switching\r\n\r\n").contains("101"));
        assert!(refuse("SMTP ready\r\n\r\n").contains("not HTTP/1.x"));
        let many: String = (0..101).map(|i| format!("x-{i}: v\r\n")).collect();
        assert!(refuse(&format!("HTTP/1.1 200 OK\r\n{many}\r\n")).contains("more than 100"));
        let huge = format!("HTTP/1.1 200 OK\r\nx: {}", "a".repeat(MAX_HEAD_BYTES + 1));
        assert_eq!(parse_head(huge.as_bytes()), Err(WireError::HeadTooLarge));
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\ncontent-le"), Ok(None), "partial");
    }

    #[test]
    fn header_lookup_ignores_case() {
        let text =
            b"HTTP/1.1 429 Too Many\r\nRetry-After: 3\r\nX-Amzn-ErrorType: Throttling\r\n\r\n";
        assert_eq!(header(text, "retry-after"), Some("3"));
        assert_eq!(header(text, "x-amzn-errortype"), Some("Throttling"));
        assert_eq!(header(text, "content-type"), None);
        let map = headers(text);
        assert_eq!(map.get("retry-after").unwrap(), "3");
        assert_eq!(map.len(), 2);
    }

    #[test]
    fn request_heads_carry_host_length_and_headers() {
        let mut out = Vec::new();
        let lines = b"authorization: Bearer k\r\n";
        let host = b"host: h.example:8080\r\n";
        request_head(&mut out, "POST", "/v1/x?a=1", host, lines, Some(17));
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "POST /v1/x?a=1 HTTP/1.1\r\nhost: h.example:8080\r\nauthorization: Bearer k\r\n\
             content-length: 17\r\n\r\n"
        );
        for n in [0u64, 7, 10, 1234567890, u64::MAX] {
            let mut out = Vec::new();
            push_number(&mut out, n);
            assert_eq!(out, n.to_string().into_bytes());
        }
    }

    fn decode_all(input: &[u8], split: usize) -> Result<(Vec<u8>, usize, bool), WireError> {
        let mut decoder = Chunked::default();
        let mut out = Vec::new();
        let mut consumed = 0;
        for piece in input.chunks(split.max(1)) {
            let used = decoder.decode(piece, &mut out, false)?;
            consumed += used;
            if used < piece.len() {
                break;
            }
        }
        Ok((out, consumed, decoder.is_done()))
    }

    #[test]
    fn chunked_bodies_decode_with_extensions_and_trailers() {
        let body =
            b"5;name=\"v\"\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-t: 1\r\n\r\nNEXT";
        for split in [1, 2, 3, 7, 1000] {
            let (out, consumed, done) = decode_all(body, split).unwrap();
            assert_eq!(out, b"helloabcdefghijklmnopqrstuvwxyz");
            assert!(done);
            assert_eq!(&body[consumed..], b"NEXT", "split {split}");
        }
        let (out, _, done) = decode_all(b"3\r\nabc\r\n", 2).unwrap();
        assert_eq!((out.as_slice(), done), (&b"abc"[..], false), "not done before the last chunk");
    }

    #[test]
    fn malformed_chunks_are_refused_by_name() {
        let refuse = |input: &[u8]| decode_all(input, 1).unwrap_err().to_string();
        assert!(refuse(b"zz\r\n").contains("invalid chunk size"));
        assert!(refuse(b"5 6\r\n").contains("invalid chunk size"));
        let (out, _, _) = decode_all(b"5 \t;a=b\r\nhello\r\n", 1).unwrap();
        assert_eq!(out, b"hello", "whitespace before an extension");
        assert!(refuse(b"\r\n").contains("no chunk size"));
        assert!(refuse(b"3\r\nabcd\r\n").contains("longer than its size"));
        assert!(refuse(b"3\nabc").contains("CRLF"));
        assert!(refuse(b"11111111111111111\r\n").contains("too large"));
        assert!(refuse(&[b'1', b';', 1]).contains("control byte"));
        let long = [b"1;".as_slice(), &[b'x'; MAX_CHUNK_LINE]].concat();
        assert!(refuse(&long).contains("too long"));
        assert!(refuse(b"0\r\nx: 1\n").contains("trailer"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_heads_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut text = b"HTTP/1.1 200 OK\r\n".to_vec();
            text.extend_from_slice(&bytes);
            let _ = parse_head(&bytes);
            if let Ok(Some(head)) = parse_head(&text) {
                prop_assert!(head.len <= text.len());
            }
        }

        #[test]
        fn mutated_chunked_bodies_never_panic_nor_overread(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..64), 0..6),
            mutations in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
            split in 1usize..64,
        ) {
            let mut wire = Vec::new();
            for chunk in &chunks {
                wire.extend_from_slice(format!("{:x};e=1\r\n", chunk.len()).as_bytes());
                wire.extend_from_slice(chunk);
                wire.extend_from_slice(b"\r\n");
            }
            wire.extend_from_slice(b"0\r\nt: 1\r\n\r\n");
            for (at, byte) in mutations {
                let at = at % wire.len();
                wire[at] = byte;
            }
            if let Ok((out, consumed, done)) = decode_all(&wire, split) {
                // Never more data than the wire held, nor bytes consumed
                // past the end of the body.
                prop_assert!(consumed <= wire.len());
                prop_assert!(out.len() <= consumed);
                if done {
                    prop_assert!(wire[..consumed].ends_with(b"\r\n\r\n"));
                }
            }
        }

        #[test]
        fn chunked_bodies_survive_any_split(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..300), 0..8),
            split in 1usize..64,
        ) {
            let mut wire = Vec::new();
            for chunk in &chunks {
                wire.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                wire.extend_from_slice(chunk);
                wire.extend_from_slice(b"\r\n");
            }
            wire.extend_from_slice(b"0\r\n\r\n");
            let (out, consumed, done) = decode_all(&wire, split).unwrap();
            prop_assert_eq!(out, chunks.concat());
            prop_assert_eq!(consumed, wire.len());
            prop_assert!(done);
            // Chunk by chunk, from the whole body at once.
            let mut decoder = Chunked::default();
            let mut at = 0;
            let mut pieces = Vec::new();
            while !decoder.is_done() {
                let mut piece = Vec::new();
                at += decoder.decode(&wire[at..], &mut piece, true).unwrap();
                if !piece.is_empty() {
                    pieces.push(piece);
                }
            }
            prop_assert_eq!(pieces, chunks);
            prop_assert_eq!(at, wire.len());
        }
    }
}
