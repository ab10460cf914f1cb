//! A Server-Sent Events parser that follows the WHATWG rules for interpreting an event stream exactly
//! (https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation), fed with
//! chunks of any size: how the bytes are split never changes what comes out (property-tested below).
//!
//! - LF, CR and CRLF all end a line, including a CRLF split between two chunks; one leading BOM is stripped.
//! - Comments (`:...`) are reported (they keep an idle connection alive) but carry no event.
//! - `data` lines are joined with LF; a field without a colon has an empty value; one space after the colon
//!   is stripped; `id` containing NUL is ignored and an empty `id` resets the last event id; `retry` counts
//!   only when it is all ASCII digits; unknown fields are ignored.
//! - An event is dispatched by an empty line, and only if it has data; an unfinished event at the end of the
//!   stream is discarded.
//! - Invalid UTF-8 is replaced (U+FFFD) and the event is flagged, never fatal.
//! - Memory is bounded: a line longer than `max_line` or an event larger than `max_event` is skipped up to the
//!   next empty line and reported as [`SseItem::Oversize`], and the stream goes on.

/// What the parser reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SseItem {
    Event(SseEvent),
    /// The server asked for this reconnection delay, in milliseconds.
    Retry(u64),
    /// A comment line (without its colon); servers send them as keep-alives.
    Comment(String),
    /// An event that was too large, skipped: its size in bytes so far and the last event id when it ended.
    Oversize {
        bytes: usize,
        last_event_id: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseEvent {
    /// The event type (`message` when the event set none).
    pub event: String,
    pub data: String,
    /// The last event id as of this event (ids persist across events until changed or reset).
    pub last_event_id: String,
    /// Some bytes of the event were not UTF-8 and were replaced.
    pub invalid_utf8: bool,
}

/// Size limits, in bytes.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_line: usize,
    pub max_event: usize,
}

impl Default for Limits {
    /// Wikimedia events are 0.7-1.6 kB; a megabyte leaves room for any real event.
    fn default() -> Self {
        Limits {
            max_line: 1 << 20,
            max_event: 1 << 20,
        }
    }
}

#[derive(Debug)]
pub struct SseParser {
    limits: Limits,
    /// The current line, not yet ended (empty while it is being skipped).
    line: Vec<u8>,
    /// Bytes of the current line, kept or not.
    line_bytes: usize,
    /// The line in progress passed `max_line`: its bytes are being dropped.
    line_too_long: bool,
    /// The previous chunk ended with CR: an LF starting the next chunk belongs to that line ending.
    after_cr: bool,
    /// Bytes seen at the start of the stream while deciding whether they are a BOM.
    start: Option<Vec<u8>>,
    data: String,
    event_type: String,
    last_event_id: String,
    invalid_utf8: bool,
    /// Bytes of the event being built (every line since the last dispatch), for `max_event`.
    event_bytes: usize,
    /// The event being built passed a limit: skip it up to the next empty line.
    skipping: bool,
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

impl SseParser {
    pub fn new(limits: Limits) -> Self {
        SseParser {
            limits,
            line: Vec::new(),
            line_bytes: 0,
            line_too_long: false,
            after_cr: false,
            start: Some(Vec::new()),
            data: String::new(),
            event_type: String::new(),
            last_event_id: String::new(),
            invalid_utf8: false,
            event_bytes: 0,
            skipping: false,
        }
    }

    /// Starts from a known last event id (a resumed stream: the id is kept for events that do not set one).
    pub fn with_last_event_id(mut self, id: &str) -> Self {
        self.set_last_event_id(id);
        self
    }

    pub fn set_last_event_id(&mut self, id: &str) {
        self.last_event_id = id.to_string();
    }

    pub fn last_event_id(&self) -> &str {
        &self.last_event_id
    }

    /// Feeds a chunk; pushes what it completes to `out`.
    pub fn feed(&mut self, mut chunk: &[u8], out: &mut Vec<SseItem>) {
        if let Some(start) = &mut self.start {
            // Hold back up to three bytes at the start of the stream until they are known not to be a BOM.
            let take = (BOM.len() - start.len()).min(chunk.len());
            start.extend_from_slice(&chunk[..take]);
            chunk = &chunk[take..];
            if start.len() < BOM.len() && BOM.starts_with(start) {
                return;
            }
            let start = self.start.take().expect("checked above");
            let rest = if start == BOM { &[][..] } else { &start[..] };
            self.feed_lines(rest, out);
        }
        self.feed_lines(chunk, out);
    }

    /// The end of the stream: an unfinished event is discarded (WHATWG), a BOM-sized prefix is flushed.
    pub fn finish(&mut self, out: &mut Vec<SseItem>) {
        if let Some(start) = self.start.take()
            && start != BOM
        {
            self.feed_lines(&start, out);
        }
        self.line.clear();
        self.line_bytes = 0;
        self.line_too_long = false;
        self.after_cr = false;
        self.reset_event();
    }

    fn feed_lines(&mut self, mut chunk: &[u8], out: &mut Vec<SseItem>) {
        if chunk.is_empty() {
            return;
        }
        if self.after_cr {
            self.after_cr = false;
            if chunk.first() == Some(&b'\n') {
                chunk = &chunk[1..];
            }
        }
        while let Some(end) = chunk.iter().position(|&b| b == b'\n' || b == b'\r') {
            self.append(&chunk[..end]);
            let cr = chunk[end] == b'\r';
            chunk = &chunk[end + 1..];
            if cr {
                match chunk.first() {
                    Some(b'\n') => chunk = &chunk[1..],
                    None => self.after_cr = true,
                    Some(_) => {}
                }
            }
            self.end_line(out);
        }
        self.append(chunk);
    }

    fn append(&mut self, bytes: &[u8]) {
        self.line_bytes += bytes.len();
        if self.line_too_long || self.skipping {
            return;
        }
        if self.line_bytes > self.limits.max_line {
            self.line_too_long = true;
            self.line.clear();
            return;
        }
        self.line.extend_from_slice(bytes);
    }

    fn end_line(&mut self, out: &mut Vec<SseItem>) {
        let mut line = std::mem::take(&mut self.line);
        let len = std::mem::take(&mut self.line_bytes);
        let too_long = std::mem::replace(&mut self.line_too_long, false);
        if len == 0 {
            self.dispatch(out);
        } else {
            self.event_bytes += len + 1;
            if too_long || self.event_bytes > self.limits.max_event {
                self.skipping = true;
            }
            if !self.skipping {
                self.process(&line, out);
            }
        }
        // Keep the allocation for the next line.
        line.clear();
        self.line = line;
    }

    fn process(&mut self, line: &[u8], out: &mut Vec<SseItem>) {
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(0) => {
                out.push(SseItem::Comment(lossy(&line[1..])));
                return;
            }
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"event" => self.event_type = lossy(value),
            b"data" => {
                let value = self.data_text(value);
                self.data.push_str(&value);
                self.data.push('\n');
            }
            b"id" if !value.contains(&0) => self.last_event_id = lossy(value),
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                // All digits: only an absurd length overflows; saturate rather than ignore.
                let ms = std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(u64::MAX);
                out.push(SseItem::Retry(ms));
            }
            _ => {}
        }
    }

    /// A `data` line's text; invalid UTF-8 is replaced, and flags the event's payload as repaired (other
    /// lines are not its payload: a comment's bad byte must not mark the next event).
    fn data_text(&mut self, bytes: &[u8]) -> String {
        match std::str::from_utf8(bytes) {
            Ok(s) => s.to_string(),
            Err(_) => {
                self.invalid_utf8 = true;
                String::from_utf8_lossy(bytes).into_owned()
            }
        }
    }

    fn dispatch(&mut self, out: &mut Vec<SseItem>) {
        if self.skipping {
            out.push(SseItem::Oversize {
                bytes: self.event_bytes,
                last_event_id: self.last_event_id.clone(),
            });
        } else if !self.data.is_empty() {
            let mut data = std::mem::take(&mut self.data);
            data.pop(); // the trailing LF
            let event = std::mem::take(&mut self.event_type);
            out.push(SseItem::Event(SseEvent {
                event: if event.is_empty() {
                    "message".into()
                } else {
                    event
                },
                data,
                last_event_id: self.last_event_id.clone(),
                invalid_utf8: self.invalid_utf8,
            }));
        }
        self.reset_event();
    }

    fn reset_event(&mut self) {
        self.data.clear();
        self.event_type.clear();
        self.invalid_utf8 = false;
        self.event_bytes = 0;
        self.skipping = false;
    }
}

/// Parses a whole stream at once (tests, files).
pub fn parse_all(bytes: &[u8], limits: Limits) -> Vec<SseItem> {
    let mut parser = SseParser::new(limits);
    let mut out = Vec::new();
    parser.feed(bytes, &mut out);
    parser.finish(&mut out);
    out
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn events(text: &[u8]) -> Vec<SseItem> {
        parse_all(text, Limits::default())
    }

    fn event(data: &str, id: &str) -> SseItem {
        SseItem::Event(SseEvent {
            event: "message".into(),
            data: data.into(),
            last_event_id: id.into(),
            invalid_utf8: false,
        })
    }

    #[test]
    fn line_endings_all_end_lines() {
        for text in [
            &b"data: a\n\ndata: b\n\n"[..],
            b"data: a\r\rdata: b\r\r",
            b"data: a\r\n\r\ndata: b\r\n\r\n",
        ] {
            assert_eq!(events(text), [event("a", ""), event("b", "")], "{text:?}");
        }
        // CR then LF in separate chunks is one line ending, not two.
        let mut p = SseParser::new(Limits::default());
        let mut out = Vec::new();
        p.feed(b"data: a\r", &mut out);
        p.feed(b"\ndata: b\r", &mut out);
        p.feed(b"\n\r", &mut out);
        p.feed(b"\n", &mut out);
        assert_eq!(out, [event("a\nb", "")]);
    }

    #[test]
    fn fields_follow_the_spec() {
        let text = b"\xEF\xBB\xBF: hello\nevent: add\ndata\ndata:  two spaces\nid: 7\nretry: 1500\nretry: 15x\nfoo: bar\n\n";
        assert_eq!(
            events(text),
            [
                SseItem::Comment(" hello".into()),
                SseItem::Retry(1500),
                SseItem::Event(SseEvent {
                    event: "add".into(),
                    data: "\n two spaces".into(),
                    last_event_id: "7".into(),
                    invalid_utf8: false,
                })
            ]
        );
        // The id persists; NUL ids are ignored; an empty id resets it.
        let text = b"id: 1\ndata: a\n\ndata: b\n\nid: x\0y\ndata: c\n\nid\ndata: d\n\n";
        assert_eq!(
            events(text),
            [
                event("a", "1"),
                event("b", "1"),
                event("c", "1"),
                event("d", "")
            ]
        );
        // No data, no event (but the id still changes); an unfinished event is discarded.
        assert_eq!(
            events(b"id: 9\n\ndata: x\n\ndata: unfinished"),
            [event("x", "9")]
        );
        // Only one BOM is stripped.
        assert_eq!(
            events(b"\xEF\xBB\xBF\xEF\xBB\xBFdata: x\n\n"),
            [] as [SseItem; 0],
            "a second BOM makes the field name unknown"
        );
    }

    #[test]
    fn invalid_utf8_is_replaced_and_flagged() {
        let out = events(b"data: caf\xE9\n\ndata: ok\n\n");
        assert_eq!(
            out[0],
            SseItem::Event(SseEvent {
                event: "message".into(),
                data: "caf\u{FFFD}".into(),
                last_event_id: String::new(),
                invalid_utf8: true,
            })
        );
        assert_eq!(out[1], event("ok", ""));
        // Only the payload's bytes flag it: not a comment's, an event type's or an id's.
        let out = events(b":caf\xE9\nevent: \xE9\nid: \xE9\ndata: ok\n\n");
        let SseItem::Event(ok) = out.last().unwrap() else {
            panic!("{out:?}")
        };
        assert_eq!((ok.data.as_str(), ok.invalid_utf8), ("ok", false));
    }

    #[test]
    fn oversize_events_are_skipped_and_reported() {
        let limits = Limits {
            max_line: 16,
            max_event: 40,
        };
        let text = b"id: 1\ndata: 0123456789abcdefghij\n\ndata: ok\n\ndata: 0123456789\ndata: 0123456789\ndata: 0123456789\n\ndata: fine\n\n";
        let out = parse_all(text, limits);
        assert_eq!(
            out,
            [
                SseItem::Oversize {
                    bytes: 33,
                    last_event_id: "1".into()
                },
                event("ok", "1"),
                SseItem::Oversize {
                    bytes: 51,
                    last_event_id: "1".into()
                },
                event("fine", "1"),
            ]
        );
    }

    fn stream() -> impl Strategy<Value = Vec<u8>> {
        let line = prop_oneof![
            Just(b"data: hello".to_vec()),
            Just(b"data:x".to_vec()),
            Just(b"data".to_vec()),
            Just(b"event: add".to_vec()),
            Just(b"id: [{\"topic\":\"t\",\"offset\":1}]".to_vec()),
            Just(b"id".to_vec()),
            Just(b"retry: 1000".to_vec()),
            Just(b":ok".to_vec()),
            Just(b"data: caf\xC3\xA9 \xE9".to_vec()),
            Just(Vec::new()),
            "[a-z:]{0,8}".prop_map(String::into_bytes),
        ];
        let ending = prop_oneof![Just(&b"\n"[..]), Just(&b"\r"[..]), Just(&b"\r\n"[..])];
        (any::<bool>(), prop::collection::vec((line, ending), 0..30)).prop_map(|(bom, lines)| {
            let mut out = if bom { BOM.to_vec() } else { Vec::new() };
            for (line, ending) in lines {
                out.extend_from_slice(&line);
                out.extend_from_slice(ending);
            }
            out
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// However the stream is cut into chunks, the items are the same.
        #[test]
        fn any_split_gives_the_same_items(
            text in stream(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
            limits in (8usize..64, 16usize..128),
        ) {
            let limits = Limits { max_line: limits.0, max_event: limits.1 };
            let whole = parse_all(&text, limits);
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(text.len() + 1)).collect();
            points.sort();
            let mut parser = SseParser::new(limits);
            let mut out = Vec::new();
            let mut at = 0;
            for p in points {
                parser.feed(&text[at..p], &mut out);
                at = p;
            }
            parser.feed(&text[at..], &mut out);
            parser.finish(&mut out);
            prop_assert_eq!(out, whole);
        }

        /// Byte by byte, too.
        #[test]
        fn byte_by_byte_gives_the_same_items(text in stream()) {
            let whole = parse_all(&text, Limits::default());
            let mut parser = SseParser::new(Limits::default());
            let mut out = Vec::new();
            for b in &text {
                parser.feed(std::slice::from_ref(b), &mut out);
            }
            parser.finish(&mut out);
            prop_assert_eq!(out, whole);
        }
    }
}
