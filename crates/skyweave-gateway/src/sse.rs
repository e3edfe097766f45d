//! An incremental parser for `text/event-stream` (the WHATWG server-sent
//! events format), fed with network chunks as they arrive.
//!
//! Lines end in `\n`, `\r\n` or `\r`; an empty line dispatches the event;
//! `data:` lines are joined with `\n`; lines starting with `:` are comments.
//! An event larger than the limit is an error, so a hostile upstream cannot
//! make the gateway buffer without bound.

use bytes::Bytes;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    #[error("a server-sent event exceeded {0} bytes")]
    TooLarge(usize),
}

#[derive(Debug)]
pub struct SseParser {
    line: Vec<u8>,
    data: Vec<u8>,
    has_data: bool,
    event: Option<String>,
    /// The previous chunk ended in `\r`: a `\n` starting this one belongs to it.
    after_cr: bool,
    max_event_bytes: usize,
}

impl SseParser {
    pub fn new(max_event_bytes: usize) -> SseParser {
        SseParser {
            line: Vec::new(),
            data: Vec::new(),
            has_data: false,
            event: None,
            after_cr: false,
            max_event_bytes,
        }
    }

    /// Feeds bytes; complete events are appended to `out`.
    pub fn push(&mut self, mut chunk: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        if self.after_cr && chunk.first() == Some(&b'\n') {
            chunk = &chunk[1..];
        }
        self.after_cr = false;
        while !chunk.is_empty() {
            let Some(end) = memchr::memchr2(b'\n', b'\r', chunk) else {
                self.line.extend_from_slice(chunk);
                self.check_size()?;
                break;
            };
            let mut next = end + 1;
            if chunk[end] == b'\r' {
                match chunk.get(next) {
                    Some(b'\n') => next += 1,
                    None => self.after_cr = true,
                    _ => {}
                }
            }
            if self.line.is_empty() {
                // The whole line is in this chunk: read it in place.
                self.take_line(&chunk[..end], out);
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(&chunk[..end]);
                self.take_line(&line, out);
                line.clear();
                self.line = line;
            }
            self.check_size()?;
            chunk = &chunk[next..];
        }
        Ok(())
    }

    /// An event (its data so far and the line being read) may not outgrow
    /// the limit.
    fn check_size(&self) -> Result<(), SseError> {
        if self.line.len() + self.data.len() > self.max_event_bytes {
            return Err(SseError::TooLarge(self.max_event_bytes));
        }
        Ok(())
    }

    /// True when bytes of an unfinished event are buffered.
    pub fn has_partial(&self) -> bool {
        !self.line.is_empty() || self.has_data
    }

    fn take_line(&mut self, line: &[u8], out: &mut Vec<SseEvent>) {
        if line.is_empty() {
            if self.has_data {
                out.push(SseEvent {
                    event: self.event.take(),
                    data: Bytes::from(std::mem::take(&mut self.data)),
                });
            }
            self.has_data = false;
            self.event = None;
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        match field {
            b"data" => {
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            b"event" => self.event = Some(String::from_utf8_lossy(value).into_owned()),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_in_pieces(input: &[u8], piece: usize) -> Vec<SseEvent> {
        let mut parser = SseParser::new(1 << 20);
        let mut out = Vec::new();
        for chunk in input.chunks(piece) {
            parser.push(chunk, &mut out).unwrap();
        }
        out
    }

    fn data(events: &[SseEvent]) -> Vec<String> {
        events.iter().map(|e| String::from_utf8(e.data.to_vec()).unwrap()).collect()
    }

    #[test]
    fn every_split_gives_the_same_events() {
        let input = b": comment\r\ndata: {\"a\":1}\r\n\r\nevent: error\ndata: x\ndata:y\n\ndata: [DONE]\r\r";
        for piece in 1..input.len() {
            let events = parse_in_pieces(input, piece);
            assert_eq!(data(&events), vec!["{\"a\":1}", "x\ny", "[DONE]"], "piece {piece}");
            assert_eq!(events[1].event.as_deref(), Some("error"));
        }
    }

    #[test]
    fn incomplete_event_is_not_dispatched() {
        let mut parser = SseParser::new(1024);
        let mut out = Vec::new();
        parser.push(b"data: partial", &mut out).unwrap();
        assert!(out.is_empty() && parser.has_partial());
        parser.push(b"\n", &mut out).unwrap();
        assert!(out.is_empty() && parser.has_partial());
        parser.push(b"\n", &mut out).unwrap();
        assert_eq!(data(&out), vec!["partial"]);
        assert!(!parser.has_partial());
    }

    #[test]
    fn oversized_event_is_an_error() {
        let mut parser = SseParser::new(16);
        let mut out = Vec::new();
        assert_eq!(parser.push(&[b'a'; 32], &mut out), Err(SseError::TooLarge(16)));
        let mut parser = SseParser::new(16);
        let many_lines = b"data: 1234567\ndata: 1234567\ndata: 1234567\n";
        assert!(parser.push(many_lines, &mut out).is_err());
    }
}

/// Property tests: the parser is fed arbitrary bytes split at arbitrary
/// points, as a hostile or broken upstream would send them.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_bytes_never_panic_and_respect_the_limit(
            bytes in proptest::collection::vec(any::<u8>(), 0..4096),
            split in 1usize..64,
        ) {
            let mut parser = SseParser::new(256);
            let mut out = Vec::new();
            for chunk in bytes.chunks(split) {
                if parser.push(chunk, &mut out).is_err() {
                    break;
                }
            }
            for event in &out {
                prop_assert!(event.data.len() <= 256 + 1);
            }
        }

        #[test]
        fn events_survive_any_chunking(
            payloads in proptest::collection::vec("[^\r\n]{0,40}", 1..8),
            line_ending in prop_oneof![Just("\n"), Just("\r\n"), Just("\r")],
            split in 1usize..32,
        ) {
            let mut text = String::new();
            for payload in &payloads {
                text.push_str(&format!("data: {payload}{line_ending}{line_ending}"));
            }
            let mut parser = SseParser::new(1 << 16);
            let mut out = Vec::new();
            for chunk in text.as_bytes().chunks(split) {
                parser.push(chunk, &mut out).unwrap();
            }
            let got: Vec<String> = out.iter().map(|e| String::from_utf8(e.data.to_vec()).unwrap()).collect();
            prop_assert_eq!(got, payloads);
        }
    }
}
