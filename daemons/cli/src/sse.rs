//! A Server-Sent Events decoder (the WHATWG `text/event-stream` format), pure: bytes in,
//! events out, no I/O. `dragonfly workflows watch` reads apid's `/api/events` with it.
//!
//! Fed in whatever chunks the network delivers; an event is complete at its blank line.
//! Lines end with LF, CRLF or CR; a comment (`: keepalive`) is dropped; unknown fields are
//! ignored; a line without a colon is a field with an empty value. A stream that is not UTF-8
//! is decoded lossily: apid sends JSON, and a damaged byte must not end the watch. A line
//! longer than [`MAX_LINE`] is cut there (a broken or hostile server cannot grow the buffer
//! without bound).

/// The longest line kept; the rest of a longer one is discarded.
pub const MAX_LINE: usize = 1 << 20;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Event {
    /// `id:` (the last one seen on the stream, as the spec says).
    pub id: Option<String>,
    /// `event:`; `message` when absent.
    pub event: String,
    /// The `data:` lines, joined by `\n`.
    pub data: String,
}

/// The decoder's state between chunks.
#[derive(Debug, Clone, Default)]
pub struct Decoder {
    line: Vec<u8>,
    /// The previous chunk ended with CR: an LF starting the next one is the same line end.
    after_cr: bool,
    /// The current line went past [`MAX_LINE`]: drop the rest of it.
    overlong: bool,
    event: Option<String>,
    data: Option<String>,
    last_id: Option<String>,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// The `Last-Event-ID` to send when reconnecting.
    pub fn last_id(&self) -> Option<&str> {
        self.last_id.as_deref()
    }

    /// Decodes `chunk`, returning the events it completed.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<Event> {
        let mut events = Vec::new();
        for &b in chunk {
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    let line = std::mem::take(&mut self.line);
                    self.overlong = false;
                    if let Some(e) = self.line_done(&line) {
                        events.push(e);
                    }
                }
                _ if self.overlong => {}
                _ => {
                    self.line.push(b);
                    if self.line.len() >= MAX_LINE {
                        self.overlong = true;
                    }
                }
            }
        }
        events
    }

    fn line_done(&mut self, line: &[u8]) -> Option<Event> {
        if line.is_empty() {
            return self.dispatch();
        }
        let line = String::from_utf8_lossy(line);
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (&*line, ""),
        };
        match field {
            "event" => self.event = Some(value.to_owned()),
            "data" => match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            },
            // An id with NUL is ignored, as the spec says.
            "id" if !value.contains('\0') => self.last_id = Some(value.to_owned()),
            _ => {}
        }
        None
    }

    fn dispatch(&mut self) -> Option<Event> {
        let event = self.event.take();
        // No data: nothing to dispatch (the spec's rule; an `event:` alone is dropped).
        let data = self.data.take()?;
        Some(Event {
            id: self.last_id.clone(),
            event: event.unwrap_or_else(|| "message".to_owned()),
            data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn all(input: &[u8]) -> Vec<Event> {
        Decoder::new().feed(input)
    }

    #[test]
    fn decodes_events_comments_and_ids() {
        let input =
            b": keepalive\n\nretry: 3000\nid: e1-7\nevent: computer.dragonfly.workflow.progress\n\
                      data: {\"a\":1}\n\nevent: resync\ndata: {}\n\n";
        let events = all(input);
        assert_eq!(
            events,
            vec![
                Event {
                    id: Some("e1-7".into()),
                    event: "computer.dragonfly.workflow.progress".into(),
                    data: "{\"a\":1}".into(),
                },
                Event {
                    id: Some("e1-7".into()),
                    event: "resync".into(),
                    data: "{}".into(),
                },
            ]
        );
    }

    #[test]
    fn line_ends_and_multi_line_data() {
        let events = all(b"data:a\r\ndata: b\rdata\r\n\r\n");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].data, "a\nb\n");
        assert_eq!(events[0].event, "message");
    }

    #[test]
    fn an_event_without_data_is_not_dispatched() {
        assert!(all(b"event: x\n\n").is_empty());
        // ...and its name does not leak into the next event.
        assert_eq!(all(b"event: x\n\ndata: y\n\n")[0].event, "message");
    }

    #[test]
    fn overlong_lines_are_cut() {
        let mut d = Decoder::new();
        let mut input = b"data: ".to_vec();
        input.extend(std::iter::repeat_n(b'x', MAX_LINE * 2));
        input.extend(b"\n\n");
        let events = d.feed(&input);
        assert_eq!(events.len(), 1);
        assert!(events[0].data.len() < MAX_LINE);
    }

    proptest! {
        /// Chunk boundaries never change what is decoded, and no input panics.
        #[test]
        fn chunking_does_not_matter(input in proptest::collection::vec(
                prop_oneof![Just(b'\n'), Just(b'\r'), Just(b':'), Just(b' '), any::<u8>(),
                    Just(b'd'), Just(b'a'), Just(b't')], 0..400),
            cut in 0usize..400) {
            let whole = Decoder::new().feed(&input);
            let cut = cut.min(input.len());
            let mut d = Decoder::new();
            let mut parts = d.feed(&input[..cut]);
            parts.extend(d.feed(&input[cut..]));
            prop_assert_eq!(whole, parts);
        }
    }
}
