//! One pass over an event's raw JSON text: every byte is validated (RFC 8259, as strictly as serde_json), the
//! values of the layout's paths are recorded in their slots (strings as ranges of the raw text, not copies)
//! and everything else is skipped without being built.
//!
//! This is the host's hot path: a ~1 kB Wikimedia event holds ~40 values and a chain reads a dozen of them, so
//! the scanner spends its time skipping. A hand-written scanner does that about twice as fast as serde_json's
//! visitor machinery; the property tests check it against serde_json on every input they generate.

use super::layout::{Layout, Node};
use super::value::{FieldValue, Text};

/// Why raw text could not be read as an event.
#[derive(Debug, PartialEq)]
pub(crate) enum ExtractError {
    InvalidJson(String),
    NotAnObject,
}

/// Nesting deeper than this is refused (as serde_json does), so hostile input cannot exhaust the stack.
const MAX_DEPTH: usize = 128;

/// Extracts the slots of `layout` from `text` (the whole raw event).
pub(crate) fn extract(
    layout: &Layout,
    text: &str,
) -> Result<Vec<Option<FieldValue>>, ExtractError> {
    let mut scan = Scanner {
        b: text.as_bytes(),
        pos: 0,
        nodes: &layout.nodes,
        out: vec![None; layout.len()],
    };
    scan.skip_ws();
    if scan.peek() != Some(b'{') {
        // Tell "not JSON" from "JSON, but not an object".
        scan.value(None, 0).map_err(|e| scan.error(e))?;
        scan.skip_ws();
        return Err(match scan.peek() {
            None => ExtractError::NotAnObject,
            Some(_) => scan.error("trailing characters"),
        });
    }
    scan.value(Some(0), 0).map_err(|e| scan.error(e))?;
    scan.skip_ws();
    if scan.pos != scan.b.len() {
        return Err(scan.error("trailing characters"));
    }
    Ok(scan.out)
}

struct Scanner<'a> {
    b: &'a [u8],
    pos: usize,
    nodes: &'a [Node],
    out: Vec<Option<FieldValue>>,
}

type Step = Result<(), &'static str>;

impl Scanner<'_> {
    fn error(&self, what: &str) -> ExtractError {
        let before = &self.b[..self.pos.min(self.b.len())];
        let line = before.iter().filter(|&&c| c == b'\n').count() + 1;
        let column = self.pos
            - before
                .iter()
                .rposition(|&c| c == b'\n')
                .map_or(0, |p| p + 1)
            + 1;
        ExtractError::InvalidJson(format!("{what} at line {line} column {column}"))
    }

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    #[inline]
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.pos += 1;
        }
    }

    /// One value. `node` is the layout node this value sits at, if the layout has one there.
    fn value(&mut self, node: Option<usize>, depth: usize) -> Step {
        let Some(index) = node else {
            return self.skip_value(depth);
        };
        let node = &self.nodes[index];
        // A key that repeats: the last occurrence wins, as when the document is parsed whole. Read before
        // writing: the slots are nearly always empty, and an unconditional store per slot (every slot, for
        // the root) cost a tenth of the parse.
        for slot in node.slots.clone() {
            if self.out[slot].is_some() {
                self.out[slot] = None;
            }
        }
        let start = self.pos;
        let slot = node.slot.map(usize::from);
        match self.peek() {
            Some(b'{') => self.object(Some(index), depth + 1)?,
            Some(b'[') => self.array(Some(index), depth + 1)?,
            // Scalars are stored by `scalar` itself: returned through memory, as a `FieldValue` is, and then
            // copied into the slot, each one stalled on its own bytes being read back (5 % of the lake bench).
            _ => return self.scalar(slot),
        }
        if let Some(slot) = slot {
            self.out[slot] = Some(self.json(start));
        }
        Ok(())
    }

    /// An object or array just scanned from `start`, as compact JSON text.
    fn json(&self, start: usize) -> FieldValue {
        let raw = &self.b[start..self.pos];
        if raw
            .iter()
            .any(|c| matches!(c, b' ' | b'\n' | b'\r' | b'\t'))
        {
            // Whitespace (maybe only inside strings): let serde_json produce the compact form. Rare.
            let text = std::str::from_utf8(raw).expect("validated as UTF-8 before scanning");
            let value: serde_json::Value =
                serde_json::from_str(text).expect("scanned as valid JSON");
            FieldValue::Json(Text::Owned(value.to_string().into()))
        } else {
            FieldValue::Json(Text::Raw {
                start: start as u32,
                end: self.pos as u32,
            })
        }
    }

    fn skip_value(&mut self, depth: usize) -> Step {
        match self.peek() {
            Some(b'{') => self.object(None, depth + 1),
            Some(b'[') => self.array(None, depth + 1),
            _ => self.scalar(None),
        }
    }

    fn object(&mut self, node: Option<usize>, depth: usize) -> Step {
        if depth > MAX_DEPTH {
            return Err("recursion limit exceeded");
        }
        self.pos += 1; // '{'
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            if self.peek() != Some(b'"') {
                return Err("expected a string key");
            }
            let child = match node {
                Some(n) => {
                    let (start, end, escaped) = self.string()?;
                    let node = &self.nodes[n];
                    if escaped {
                        node.child(&unescape(&self.b[start..end]))
                    } else {
                        node.child_bytes(&self.b[start..end])
                    }
                }
                None => {
                    self.string()?;
                    None
                }
            };
            self.skip_ws();
            if self.peek() != Some(b':') {
                return Err("expected `:`");
            }
            self.pos += 1;
            self.skip_ws();
            self.value(child, depth)?;
            self.skip_ws();
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    self.skip_ws();
                }
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err("expected `,` or `}`"),
            }
        }
    }

    fn array(&mut self, node: Option<usize>, depth: usize) -> Step {
        if depth > MAX_DEPTH {
            return Err("recursion limit exceeded");
        }
        self.pos += 1; // '['
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(());
        }
        let mut index = 0;
        loop {
            let child = node.and_then(|n| self.nodes[n].child_at(self.nodes, index));
            self.value(child, depth)?;
            self.skip_ws();
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    self.skip_ws();
                    index += 1;
                }
                Some(b']') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err("expected `,` or `]`"),
            }
        }
    }

    /// A string, number or literal, stored in `slot` when there is one.
    fn scalar(&mut self, slot: Option<usize>) -> Step {
        match self.peek() {
            Some(b'"') => {
                let (start, end, escaped) = self.string()?;
                if let Some(slot) = slot {
                    self.out[slot] = Some(FieldValue::Text(if escaped {
                        Text::Owned(unescape(&self.b[start..end]).into())
                    } else {
                        Text::Raw {
                            start: start as u32,
                            end: end as u32,
                        }
                    }));
                }
                Ok(())
            }
            Some(b't') => self.literal(b"true", slot, FieldValue::Bool(true)),
            Some(b'f') => self.literal(b"false", slot, FieldValue::Bool(false)),
            Some(b'n') => self.literal(b"null", slot, FieldValue::Null),
            Some(b'-' | b'0'..=b'9') => self.number(slot),
            Some(_) => Err("expected a value"),
            None => Err("EOF while parsing a value"),
        }
    }

    #[inline]
    fn literal(&mut self, word: &[u8], slot: Option<usize>, value: FieldValue) -> Step {
        if self.b[self.pos..].starts_with(word) {
            self.pos += word.len();
            if let Some(slot) = slot {
                self.out[slot] = Some(value);
            }
            Ok(())
        } else {
            Err("expected a value")
        }
    }

    /// A string at `pos` (on its opening quote). Returns the range of its contents and whether it has
    /// escapes; leaves `pos` after the closing quote.
    #[inline]
    fn string(&mut self) -> Result<(usize, usize, bool), &'static str> {
        self.pos += 1;
        let start = self.pos;
        let mut escaped = false;
        loop {
            self.pos += special_offset(&self.b[self.pos..]);
            match self.peek() {
                Some(b'"') => {
                    let end = self.pos;
                    self.pos += 1;
                    return Ok((start, end, escaped));
                }
                Some(b'\\') => {
                    escaped = true;
                    self.pos += 1;
                    match self.peek() {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                            self.pos += 1
                        }
                        Some(b'u') => {
                            let unit = self.hex4(self.pos + 1)?;
                            self.pos += 5;
                            if (0xD800..0xDC00).contains(&unit) {
                                // A leading surrogate must be followed by a trailing one.
                                if self.b.get(self.pos..self.pos + 2) != Some(b"\\u") {
                                    return Err("lone leading surrogate in hex escape");
                                }
                                let low = self.hex4(self.pos + 2)?;
                                if !(0xDC00..0xE000).contains(&low) {
                                    return Err("lone leading surrogate in hex escape");
                                }
                                self.pos += 6;
                            } else if (0xDC00..0xE000).contains(&unit) {
                                return Err("lone trailing surrogate in hex escape");
                            }
                        }
                        Some(_) => return Err("invalid escape"),
                        None => return Err("EOF while parsing a string"),
                    }
                }
                Some(_) => return Err("control character in a string"),
                None => return Err("EOF while parsing a string"),
            }
        }
    }

    fn hex4(&self, at: usize) -> Result<u16, &'static str> {
        let digits = self.b.get(at..at + 4).ok_or("EOF while parsing a string")?;
        digits.iter().try_fold(0u16, |n, &d| {
            let v = (d as char).to_digit(16).ok_or("invalid escape")?;
            Ok(n * 16 + v as u16)
        })
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`, read as an integer when it is one that fits an i64,
    /// else as a finite float, and stored in `slot` when there is one. Numbers out of the f64 range are
    /// refused even when skipped, as serde_json refuses them in a document, so that every accepted event can
    /// be parsed whole later.
    fn number(&mut self, slot: Option<usize>) -> Step {
        let start = self.pos;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.pos += 1;
        }
        let int_start = self.pos;
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err("invalid number"),
        }
        let int_end = self.pos;
        let mut integer = true;
        if self.peek() == Some(b'.') {
            integer = false;
            self.pos += 1;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err("invalid number");
            }
            self.digits();
        }
        if let Some(b'e' | b'E') = self.peek() {
            integer = false;
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err("invalid number");
            }
            self.digits();
        }
        let digits = self.pos - start;
        if integer && int_end - int_start <= 18 {
            // Up to 18 digits always fit an i64: read them here rather than through `str::parse`.
            if let Some(slot) = slot {
                let magnitude = self.b[int_start..int_end]
                    .iter()
                    .fold(0i64, |n, &d| n * 10 + i64::from(d - b'0'));
                self.out[slot] = Some(match (negative, magnitude) {
                    // `-0` is a float to serde_json (there is no negative zero integer), and so to the
                    // document an event becomes when parsed whole.
                    (true, 0) => FieldValue::Float(-0.0),
                    (true, m) => FieldValue::Int(-m),
                    (false, m) => FieldValue::Int(m),
                });
            }
            return Ok(());
        }
        if integer && slot.is_none() && digits < 300 {
            // Too short to overflow an f64: nothing to check.
            return Ok(());
        }
        let text = std::str::from_utf8(&self.b[start..self.pos]).expect("ASCII digits");
        let value = if integer && let Ok(i) = text.parse::<i64>() {
            FieldValue::Int(i)
        } else {
            match text.parse::<f64>() {
                Ok(f) if f.is_finite() => FieldValue::Float(f),
                _ => return Err("number out of range"),
            }
        };
        if let Some(slot) = slot {
            self.out[slot] = Some(value);
        }
        Ok(())
    }

    #[inline]
    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
    }
}

/// The offset of the first byte in `b` that ends a run of plain string bytes: a quote, a backslash or a
/// control character (or `b.len()`). Sixteen bytes at a time with SSE2 (part of every x86-64 CPU), eight at a
/// time elsewhere.
#[inline]
fn special_offset(b: &[u8]) -> usize {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE2 is part of the x86-64 baseline, so every CPU that runs this binary has it.
    let mut i = match unsafe { special_offset_sse2(b) } {
        Ok(found) => return found,
        Err(scanned) => scanned,
    };
    #[cfg(not(target_arch = "x86_64"))]
    let mut i = 0;
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    while i + 8 <= b.len() {
        let chunk = u64::from_le_bytes(b[i..i + 8].try_into().expect("eight bytes"));
        let quote = chunk ^ (ONES * b'"' as u64);
        let slash = chunk ^ (ONES * b'\\' as u64);
        // A byte is zero in `x` iff `(x - 1) & !x` has its high bit; a byte is below 0x20 iff `chunk - 0x20`
        // borrows into its high bit while the byte's own high bit is clear. Only the lowest hit is exact,
        // which is the one wanted.
        let found = ((quote.wrapping_sub(ONES) & !quote)
            | (slash.wrapping_sub(ONES) & !slash)
            | (chunk.wrapping_sub(ONES * 0x20) & !chunk))
            & HIGHS;
        if found != 0 {
            return i + (found.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < b.len() && !matches!(b[i], b'"' | b'\\' | 0..=0x1f) {
        i += 1;
    }
    i
}

/// [`special_offset`] sixteen bytes at a time: `Ok(offset)` when found, else `Err(bytes scanned)` (the rest,
/// under sixteen bytes, is for the caller).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse2")]
fn special_offset_sse2(b: &[u8]) -> Result<usize, usize> {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_max_epu8, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8,
    };
    let quote = _mm_set1_epi8(b'"' as i8);
    let slash = _mm_set1_epi8(b'\\' as i8);
    let control = _mm_set1_epi8(0x1f);
    let mut i = 0;
    while i + 16 <= b.len() {
        // SAFETY: the 16 bytes at `i` are inside `b` (checked just above); the load is unaligned.
        let v = unsafe { _mm_loadu_si128(b.as_ptr().add(i).cast::<__m128i>()) };
        // A byte is a control character iff max(byte, 0x1f) == 0x1f (unsigned).
        let hits = _mm_or_si128(
            _mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, slash)),
            _mm_cmpeq_epi8(_mm_max_epu8(v, control), control),
        );
        let mask = _mm_movemask_epi8(hits) as u32;
        if mask != 0 {
            return Ok(i + mask.trailing_zeros() as usize);
        }
        i += 16;
    }
    Err(i)
}

/// The text of string contents that hold escapes (already validated by `Scanner::string`).
fn unescape(raw: &[u8]) -> String {
    let mut out = String::with_capacity(raw.len());
    let text = std::str::from_utf8(raw).expect("validated as UTF-8 before scanning");
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('b') => out.push('\u{8}'),
            Some('f') => out.push('\u{c}'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('t') => out.push('\t'),
            Some('u') => {
                fn hex(chars: &mut std::str::Chars<'_>) -> u32 {
                    let digits: String = chars.take(4).collect();
                    u32::from_str_radix(&digits, 16).unwrap_or(0xFFFD)
                }
                let unit = hex(&mut chars);
                let code = if (0xD800..0xDC00).contains(&unit) {
                    chars.next(); // '\\'
                    chars.next(); // 'u'
                    let low = hex(&mut chars);
                    0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)
                } else {
                    unit
                };
                out.push(char::from_u32(code).unwrap_or('\u{FFFD}'));
            }
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventShape, JsonPath};

    fn layout(reads: &[&str]) -> Layout {
        let reads: Vec<JsonPath> = reads.iter().map(|p| JsonPath::parse(p).unwrap()).collect();
        Layout::new(&EventShape::default(), &reads, &[]).unwrap()
    }

    fn get(layout: &Layout, text: &str, path: &str) -> Option<serde_json::Value> {
        let out = extract(layout, text).unwrap();
        let raw = bytestring::ByteString::from(text);
        out[layout.slot(path).unwrap() as usize]
            .as_ref()
            .map(|v| v.to_json(&raw))
    }

    #[test]
    fn minus_zero_is_the_float_serde_json_reads() {
        let l = layout(&["z", "p"]);
        let text = r#"{"z": -0, "p": 0}"#;
        let whole: serde_json::Value = serde_json::from_str(text).unwrap();
        let z = get(&l, text, "z").unwrap();
        assert_eq!(z.as_f64().map(f64::to_bits), Some((-0.0f64).to_bits()));
        assert_eq!(z.is_f64(), whole["z"].is_f64());
        assert_eq!(get(&l, text, "p").unwrap(), whole["p"]);
        assert!(get(&l, text, "p").unwrap().is_i64());
    }

    #[test]
    fn extracts_scalars_strings_and_nested_values() {
        let l = layout(&["a", "b.c", "d", "d.0", "e", "s", "big", "f", "u"]);
        let text = r#"{"a": 1, "b": {"c": "x\"y", "z": [1, 2]}, "d": [ "p" , 2], "e": null, "s": "plain",
                       "big": 18446744073709551615, "f": 1.5, "skip": {"deep": [{"x": 1}]},
                       "u": "\u00e9\ud83d\ude00"}"#;
        assert_eq!(get(&l, text, "a"), Some(1.into()));
        assert_eq!(get(&l, text, "b.c"), Some("x\"y".into()));
        assert_eq!(get(&l, text, "d"), Some(serde_json::json!(["p", 2])));
        assert_eq!(get(&l, text, "d.0"), Some("p".into()));
        assert_eq!(get(&l, text, "e"), Some(serde_json::Value::Null));
        assert_eq!(get(&l, text, "s"), Some("plain".into()));
        assert_eq!(
            get(&l, text, "big"),
            Some(serde_json::json!(18446744073709551615f64))
        );
        assert_eq!(get(&l, text, "f"), Some(serde_json::json!(1.5)));
        assert_eq!(get(&l, text, "u"), Some("é😀".into()));
        assert_eq!(get(&l, text, "meta.id"), None);
    }

    #[test]
    fn last_duplicate_key_wins() {
        let l = layout(&["a.b"]);
        assert_eq!(get(&l, r#"{"a": {"b": 1}, "a": 2}"#, "a.b"), None);
        assert_eq!(get(&l, r#"{"a": 2, "a": {"b": 3}}"#, "a.b"), Some(3.into()));
    }

    #[test]
    fn rejects_what_is_not_a_json_object() {
        let l = layout(&["a"]);
        assert_eq!(extract(&l, "[1]"), Err(ExtractError::NotAnObject));
        assert_eq!(extract(&l, " 12 "), Err(ExtractError::NotAnObject));
        for bad in [
            "{\"a\":1} x",
            "{\"skip\": [1,}",
            "",
            "{\"a\": 01}",
            "{\"a\": 1e999}",
            "{\"a\": \"\\x\"}",
            "{\"a\": \"\\ud800\"}",
            "{\"a\": \"tab\there\"}",
            "{'a': 1}",
            "{\"a\" 1}",
            "[1] x",
        ] {
            assert!(
                matches!(extract(&l, bad), Err(ExtractError::InvalidJson(_))),
                "{bad}: {:?}",
                extract(&l, bad)
            );
        }
        let deep = format!("{{\"a\": {}{}}}", "[".repeat(200), "]".repeat(200));
        assert!(
            matches!(extract(&l, &deep), Err(ExtractError::InvalidJson(e)) if e.contains("recursion"))
        );
    }

    #[test]
    fn finds_special_bytes_eight_at_a_time() {
        for text in [
            "",
            "abc",
            "abcdefghij\"",
            "abcdefgh\\",
            "abcdefghijklmno\u{1}",
            "é\"",
            "\u{7f}x",
            "0123456789abcdefghijklmnopqrstuvwxyz\"",
            "0123456789abcdefé\u{80}\u{ff}\u{1f}",
            "0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            let expected = text
                .bytes()
                .position(|b| matches!(b, b'"' | b'\\' | 0..=0x1f))
                .unwrap_or(text.len());
            assert_eq!(special_offset(text.as_bytes()), expected, "{text:?}");
        }
    }

    mod against_serde_json {
        use super::*;
        use proptest::prelude::*;
        use serde_json::Value;

        fn json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                any::<u64>().prop_map(Value::from),
                (-1e300f64..1e300).prop_map(Value::from),
                "[a-c\\\"\u{e9}\u{1F600}\n ]{0,6}".prop_map(Value::String),
            ];
            leaf.prop_recursive(4, 40, 5, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                    prop::collection::btree_map("[a-c0-2]{1,2}", inner, 0..5)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        /// Every path to every value of `doc`, and a few that are not there.
        fn paths(doc: &Value, prefix: &str, out: &mut Vec<String>) {
            let mut visit = |key: String, child: &Value| {
                let path = if prefix.is_empty() {
                    key
                } else {
                    format!("{prefix}.{key}")
                };
                paths(child, &path, out);
                out.push(path);
            };
            match doc {
                Value::Object(map) => map.iter().for_each(|(k, v)| visit(k.clone(), v)),
                Value::Array(items) => items
                    .iter()
                    .enumerate()
                    .for_each(|(i, v)| visit(i.to_string(), v)),
                _ => {}
            }
        }

        /// Pretty or compact, and sometimes with a byte changed or cut: the scanner must accept exactly
        /// what serde_json accepts.
        fn text() -> impl Strategy<Value = String> {
            (
                json(),
                any::<bool>(),
                any::<u8>(),
                any::<prop::sample::Index>(),
                0..4u8,
            )
                .prop_map(|(doc, pretty, byte, at, mutation)| {
                    let doc = match doc {
                        Value::Object(_) => doc,
                        other => serde_json::json!({ "v": other }),
                    };
                    let mut text = if pretty {
                        serde_json::to_string_pretty(&doc).unwrap()
                    } else {
                        doc.to_string()
                    };
                    let i = at.index(text.len());
                    match mutation {
                        1 if text.is_char_boundary(i) => text.truncate(i),
                        2 if text.is_char_boundary(i)
                            && text.is_char_boundary(i + 1)
                            && byte.is_ascii() =>
                        {
                            text.replace_range(i..i + 1, &(byte as char).to_string())
                        }
                        _ => {}
                    }
                    text
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(3000))]

            #[test]
            fn accepts_exactly_what_serde_json_accepts(text in text()) {
                let ours = extract(&layout(&["v"]), &text);
                match serde_json::from_str::<Value>(&text) {
                    Ok(Value::Object(_)) => prop_assert!(ours.is_ok(), "{text}: {ours:?}"),
                    Ok(_) => prop_assert_eq!(ours, Err(ExtractError::NotAnObject)),
                    Err(e) => prop_assert!(
                        matches!(ours, Err(ExtractError::InvalidJson(_))),
                        "{text}: serde_json says {e}, we say {ours:?}"
                    ),
                }
            }

            #[test]
            fn extracts_what_serde_json_reads(doc in json(), pretty in any::<bool>()) {
                let doc = match doc {
                    Value::Object(_) => doc,
                    other => serde_json::json!({ "v": other }),
                };
                let text = if pretty { serde_json::to_string_pretty(&doc).unwrap() } else { doc.to_string() };
                let mut wanted = Vec::new();
                paths(&doc, "", &mut wanted);
                wanted.extend(["zz".to_string(), "v.zz".into(), "v.9".into()]);
                wanted.sort();
                wanted.dedup();
                let refs: Vec<&str> = wanted.iter().map(String::as_str).collect();
                let l = layout(&refs);
                let out = extract(&l, &text).unwrap();
                let raw = bytestring::ByteString::from(text.as_str());
                for path in &wanted {
                    let ours = out[l.slot(path).unwrap() as usize].as_ref().map(|v| v.to_json(&raw));
                    let expected = JsonPath::parse(path).unwrap().get(&doc).map(|v| match v {
                        // Plugins get numbers as i64 when they fit, else as f64.
                        Value::Number(n) if n.as_i64().is_none() => Value::from(n.as_f64().unwrap()),
                        other => other.clone(),
                    });
                    prop_assert_eq!(ours, expected, "{}", path);
                }
            }
        }
    }
}
