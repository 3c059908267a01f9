//! Cutting a feed's byte stream into records, as bytes arrive in chunks of
//! any size: newline-delimited JSON lines, or server-sent events (the
//! WHATWG `text/event-stream` format). Pure: no I/O.

use bytes::Bytes;

/// One record cut from the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cut {
    /// A whole record, and its id where the framing carries one (SSE `id:`).
    Record { data: Bytes, id: Option<String> },
    /// A record longer than the limit: its first `limit` bytes (the rest is
    /// skipped up to the end of the record).
    Oversize { excerpt: Bytes },
}

/// Newline-delimited records (`\n` or `\r\n`); blank lines are skipped.
#[derive(Debug)]
pub struct Lines {
    limit: usize,
    partial: Vec<u8>,
    /// Past the limit: skipping to the next newline.
    skipping: bool,
}

impl Lines {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            partial: Vec::new(),
            skipping: false,
        }
    }

    /// Feeds a chunk; returns the records it completes.
    pub fn push(&mut self, mut chunk: &[u8], out: &mut Vec<Cut>) {
        while !chunk.is_empty() {
            let (piece, complete) = match chunk.iter().position(|&b| b == b'\n') {
                Some(at) => (&chunk[..at], true),
                None => (chunk, false),
            };
            chunk = if complete { &chunk[piece.len() + 1..] } else { &[] };
            if !self.skipping {
                let room = self.limit + 1 - self.partial.len().min(self.limit + 1);
                self.partial.extend_from_slice(&piece[..piece.len().min(room)]);
                if self.partial.len() > self.limit {
                    self.partial.truncate(self.limit);
                    out.push(Cut::Oversize {
                        excerpt: Bytes::from(std::mem::take(&mut self.partial)),
                    });
                    self.skipping = true;
                }
            }
            if complete {
                if !self.skipping {
                    let mut line = std::mem::take(&mut self.partial);
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    if !line.iter().all(u8::is_ascii_whitespace) {
                        out.push(Cut::Record {
                            data: Bytes::from(line),
                            id: None,
                        });
                    }
                }
                self.skipping = false;
            }
        }
    }

    /// What the stream ended in the middle of (a half line, never published).
    pub fn unfinished(&self) -> usize {
        self.partial.len()
    }
}

/// Server-sent events: `data:` lines joined by `\n`, `id:` setting the last
/// event id, dispatched at a blank line; comments (`:`) and other fields
/// ignored. An event without data is not a record.
#[derive(Debug)]
pub struct Events {
    /// The longest event data that is a record.
    limit: usize,
    lines: Lines,
    data: Vec<u8>,
    has_data: bool,
    oversize: bool,
    /// The last event id seen (it carries over to later events, as in the spec).
    last_id: Option<String>,
}

impl Events {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            // A field line may be as long as a whole event, plus its name.
            lines: Lines::new(limit + 16),
            data: Vec::new(),
            has_data: false,
            oversize: false,
            last_id: None,
        }
    }

    /// Feeds a chunk; returns the events it completes.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<Cut>) {
        // Blank lines matter here, so split lines ourselves around `Lines`
        // (which drops them): mark each line end by what precedes it.
        let mut start = 0;
        for (at, &byte) in chunk.iter().enumerate() {
            if byte == b'\n' {
                self.feed_line_part(&chunk[start..at], true, out);
                start = at + 1;
            }
        }
        if start < chunk.len() {
            self.feed_line_part(&chunk[start..], false, out);
        }
    }

    fn feed_line_part(&mut self, part: &[u8], complete: bool, out: &mut Vec<Cut>) {
        let mut cut = Vec::new();
        // Reuse `Lines` for the length limit and `\r` handling. A line goes
        // over the limit in whichever chunk takes it there, whole or not.
        self.lines.push(part, &mut cut);
        for over in cut.drain(..) {
            if let Cut::Oversize { excerpt } = over {
                self.oversize_field(&excerpt);
            }
        }
        if !complete {
            return;
        }
        let was_blank = self.lines.partial.iter().all(u8::is_ascii_whitespace) && !self.lines.skipping;
        self.lines.push(b"\n", &mut cut);
        match cut.pop() {
            Some(Cut::Record { data, .. }) => self.field(&data),
            Some(Cut::Oversize { excerpt }) => self.oversize_field(&excerpt),
            None if was_blank => self.dispatch(out),
            None => {}
        }
    }

    fn field(&mut self, line: &[u8]) {
        if line.first() == Some(&b':') {
            return;
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(at) => {
                let value = &line[at + 1..];
                (&line[..at], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match name {
            b"data" => {
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
                if self.data.len() > self.limit {
                    self.oversize = true;
                }
            }
            // An id with a NUL is ignored, as the spec says.
            b"id" if !value.contains(&0) => self.last_id = Some(String::from_utf8_lossy(value).into_owned()),
            _ => {}
        }
    }

    /// A field line longer than the limit, of which `excerpt` is the head:
    /// a `data` line makes its event oversize (its excerpt is the data the
    /// head holds); any other (a comment used as padding, an unknown field,
    /// an absurd id) is ignored, as a short one would be.
    fn oversize_field(&mut self, excerpt: &[u8]) {
        let Some(value) = excerpt
            .strip_prefix(b"data:")
            .map(|value| value.strip_prefix(b" ").unwrap_or(value))
        else {
            return;
        };
        if self.has_data {
            self.data.push(b'\n');
        }
        let room = (self.limit + 1).saturating_sub(self.data.len());
        self.data.extend_from_slice(&value[..value.len().min(room)]);
        self.has_data = true;
        self.oversize = true;
    }

    fn dispatch(&mut self, out: &mut Vec<Cut>) {
        let data = std::mem::take(&mut self.data);
        if self.oversize {
            let keep = data.len().min(self.limit);
            out.push(Cut::Oversize {
                excerpt: Bytes::copy_from_slice(&data[..keep]),
            });
        } else if self.has_data {
            out.push(Cut::Record {
                data: Bytes::from(data),
                id: self.last_id.clone(),
            });
        }
        self.has_data = false;
        self.oversize = false;
    }

    /// The last event id seen, for `Last-Event-ID` on reconnecting.
    pub fn last_id(&self) -> Option<&str> {
        self.last_id.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(cuts: &[Cut]) -> Vec<(String, Option<String>)> {
        cuts.iter()
            .map(|c| match c {
                Cut::Record { data, id } => (String::from_utf8_lossy(data).into_owned(), id.clone()),
                Cut::Oversize { excerpt } => (format!("OVERSIZE {}", excerpt.len()), None),
            })
            .collect()
    }

    /// The events an `Events` of `limit` cuts from the chunks it is fed.
    fn events_of(limit: usize) -> impl FnMut(&[&[u8]]) -> Vec<Cut> {
        move |chunks| {
            let mut events = Events::new(limit);
            let mut out = Vec::new();
            for chunk in chunks {
                events.push(chunk, &mut out);
            }
            out
        }
    }

    /// Feeds `text` in every possible split into two chunks, and byte by byte.
    fn each_split(text: &[u8], mut run: impl FnMut(&[&[u8]]) -> Vec<Cut>) -> Vec<Cut> {
        let whole = run(&[text]);
        for at in 0..=text.len() {
            assert_eq!(run(&[&text[..at], &text[at..]]), whole, "split at {at}");
        }
        let bytes: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(run(&bytes), whole, "byte by byte");
        whole
    }

    #[test]
    fn lines_are_cut_whatever_the_chunks() {
        let text = b"{\"id\":1}\n\r\n{\"id\":2}\r\n\n  \n{\"id\":3}\n{\"id\":4,\"half";
        let cuts = each_split(text, |chunks| {
            let mut lines = Lines::new(100);
            let mut out = Vec::new();
            for chunk in chunks {
                lines.push(chunk, &mut out);
            }
            assert_eq!(lines.unfinished(), 13, "the half line is held, never a record");
            out
        });
        assert_eq!(
            records(&cuts),
            [
                ("{\"id\":1}".to_owned(), None),
                ("{\"id\":2}".to_owned(), None),
                ("{\"id\":3}".to_owned(), None)
            ]
        );
    }

    #[test]
    fn an_over_long_line_is_cut_to_an_excerpt_and_the_next_one_kept() {
        let text = b"aaaaaaaaaaaa\nbb\n";
        let cuts = each_split(text, |chunks| {
            let mut lines = Lines::new(5);
            let mut out = Vec::new();
            for chunk in chunks {
                lines.push(chunk, &mut out);
            }
            out
        });
        assert_eq!(
            cuts,
            [
                Cut::Oversize {
                    excerpt: Bytes::from_static(b"aaaaa")
                },
                Cut::Record {
                    data: Bytes::from_static(b"bb"),
                    id: None
                }
            ]
        );
    }

    #[test]
    fn server_sent_events_as_the_spec_frames_them() {
        let text = b": keep-alive\n\nid: 7\nevent: tweet\ndata: {\"a\":1}\n\n\
                     data: line one\ndata:line two\n\n\
                     id: 9\ndata\n\nretry: 10\n\nid\ndata: x\r\n\r\ndata: never ended\n";
        let cuts = each_split(text, events_of(100));
        assert_eq!(
            records(&cuts),
            [
                ("{\"a\":1}".to_owned(), Some("7".to_owned())),
                ("line one\nline two".to_owned(), Some("7".to_owned())),
                (String::new(), Some("9".to_owned())),
                ("x".to_owned(), Some(String::new())),
            ]
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut seed: u64 = 0x5EED_F00D;
        for _ in 0..2_000 {
            let len = (seed % 200) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    [b'\n', b'\r', b':', b'd', b'a', b't', b' ', b'x', 0][(seed % 9) as usize]
                })
                .collect();
            let (mut lines, mut events, mut out) = (Lines::new(16), Events::new(16), Vec::new());
            for chunk in bytes.chunks(7) {
                lines.push(chunk, &mut out);
                events.push(chunk, &mut out);
            }
            for cut in &out {
                match cut {
                    Cut::Record { data, .. } => assert!(data.len() <= 16, "{data:?}"),
                    Cut::Oversize { excerpt } => assert_eq!(excerpt.len(), 16, "{excerpt:?}"),
                }
            }
        }
    }

    /// Found by the `feed_framing` fuzz target: a field line over the limit
    /// that is not data (a padding comment, an unknown field) made its event
    /// an oversize record with an empty excerpt. It is ignored now, as a
    /// short one is; an over-long data line gives an excerpt of the limit.
    #[test]
    fn over_long_lines_that_are_not_data_are_ignored() {
        let padding = ":".repeat(100);
        let unknown = "x".repeat(100);
        let data = "d".repeat(100);
        let text = format!("{padding}\ndata: a\n\n{unknown}\n\ndata: {data}\nid: 5\n\ndata: b\n\n");
        let cuts = each_split(text.as_bytes(), events_of(20));
        assert_eq!(
            records(&cuts),
            [
                ("a".to_owned(), None),
                ("OVERSIZE 20".to_owned(), None),
                ("b".to_owned(), Some("5".to_owned())),
            ]
        );
        // The fuzzer's input itself: one over-long line of neither kind.
        let mut crash = vec![0xff; 10];
        crash.extend([0x0c; 28]);
        crash.extend([0xff; 42]);
        crash.extend([0x83, 0x08, 0x0a, 0x0a, 0x0a]);
        let mut out = Vec::new();
        Events::new(64).push(&crash, &mut out);
        assert_eq!(out, []);
    }
}
