//! Tor control-port replies, sans-IO (control-spec section 2.3, 2.4): bytes in, whole
//! replies out. A reply is lines `NNN-text` (more follow), `NNN+text` (a data block
//! follows, ended by a line `.`, its lines dot-escaped) and a last `NNN text`. Status
//! 650 marks an asynchronous event, kept apart from the answers to commands.

use std::collections::VecDeque;

use thiserror::Error;

/// One reply or event line.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Line {
    /// The text after the status code and separator.
    pub(crate) text: String,
    /// The data block of a `NNN+` line, dot-unescaped, lines joined by `\n`.
    pub(crate) data: Option<String>,
}

/// A whole reply: every line shares one status code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reply {
    /// The three-digit status (250 OK, 5xx errors, 650 events).
    pub(crate) status: u16,
    /// Its lines in order; never empty.
    pub(crate) lines: Vec<Line>,
}

impl Reply {
    /// An asynchronous event (status 650), not the answer to a command.
    pub(crate) fn is_event(&self) -> bool {
        self.status == 650
    }

    /// A 2xx success.
    pub(crate) fn is_ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The first line's text (a 5xx reply's message).
    pub(crate) fn first(&self) -> &str {
        self.lines.first().map_or("", |l| l.text.as_str())
    }
}

/// Input that is no control-port reply.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReplyError {
    /// A line without a status code and a separator.
    #[error("malformed reply line {0:?}")]
    Malformed(String),
    /// A multi-line reply whose lines carry different codes.
    #[error("reply status changed from {0} to {1} within one reply")]
    Mixed(u16, u16),
    /// More than [`MAX_REPLY`] bytes without the reply's end.
    #[error("reply longer than {MAX_REPLY} bytes")]
    TooLong,
}

/// The longest reply kept (a full `circuit-status` of a busy Tor fits many times).
pub(crate) const MAX_REPLY: usize = 4 << 20;

/// Accumulates bytes and yields whole replies.
#[derive(Debug, Default)]
pub(crate) struct Parser {
    buf: Vec<u8>,
    /// Where the next unparsed line starts in `buf`.
    pos: usize,
    status: Option<u16>,
    lines: Vec<Line>,
    /// Inside a data block, the lines read so far.
    data: Option<Vec<String>>,
    done: VecDeque<Reply>,
}

impl Parser {
    /// A parser with nothing read.
    pub(crate) fn new() -> Parser {
        Parser::default()
    }

    /// Feed bytes as they arrive (any split, even inside a line or its CRLF).
    pub(crate) fn push(&mut self, bytes: &[u8]) -> Result<(), ReplyError> {
        self.buf.extend_from_slice(bytes);
        while let Some(end) = self.buf[self.pos..].iter().position(|&b| b == b'\n') {
            let raw = &self.buf[self.pos..self.pos + end];
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            let line = String::from_utf8_lossy(raw).into_owned();
            self.pos += end + 1;
            self.line(line)?;
        }
        self.buf.drain(..self.pos);
        self.pos = 0;
        let pending = self.buf.len()
            + self.lines.iter().map(|l| l.text.len()).sum::<usize>()
            + self.data.iter().flatten().map(String::len).sum::<usize>();
        if pending > MAX_REPLY {
            return Err(ReplyError::TooLong);
        }
        Ok(())
    }

    /// The next whole reply or event, in arrival order.
    pub(crate) fn next(&mut self) -> Option<Reply> {
        self.done.pop_front()
    }

    fn line(&mut self, line: String) -> Result<(), ReplyError> {
        if let Some(block) = &mut self.data {
            if line == "." {
                let joined = std::mem::take(block).join("\n");
                self.data = None;
                if let Some(last) = self.lines.last_mut() {
                    last.data = Some(joined);
                }
            } else {
                // A data line starting with a dot had a second one put before it.
                let l = line.strip_prefix('.').map_or(line.clone(), str::to_owned);
                block.push(l);
            }
            return Ok(());
        }
        let b = line.as_bytes();
        // The separator is checked before slicing after it: a multi-byte character
        // there (found by fuzz/fuzz_targets/tor_reply.rs) is no char boundary at 4.
        let well_formed = b.len() >= 4
            && b[..3].iter().all(u8::is_ascii_digit)
            && matches!(b[3], b'-' | b'+' | b' ');
        if !well_formed {
            return Err(ReplyError::Malformed(line));
        }
        let status: u16 = line[..3]
            .parse()
            .map_err(|_| ReplyError::Malformed(line.clone()))?;
        if let Some(s) = self.status.filter(|&s| s != status) {
            return Err(ReplyError::Mixed(s, status));
        }
        self.status = Some(status);
        let text = line[4..].to_owned();
        match b[3] {
            b'-' => self.lines.push(Line { text, data: None }),
            b'+' => {
                self.lines.push(Line { text, data: None });
                self.data = Some(Vec::new());
            }
            b' ' => {
                self.lines.push(Line { text, data: None });
                self.done.push_back(Reply {
                    status,
                    lines: std::mem::take(&mut self.lines),
                });
                self.status = None;
            }
            _ => return Err(ReplyError::Malformed(line)),
        }
        Ok(())
    }
}

/// One word of a reply line: a positional argument or `KEY=VALUE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Word {
    /// A bare argument.
    Arg(String),
    /// `KEY=VALUE`, the value unquoted when it was a quoted string.
    Pair(String, String),
}

/// Splits a line into words; quoted values (`KEY="a b"`, `"a"`) keep their spaces and
/// lose their C-style escapes.
pub(crate) fn words(line: &str) -> Vec<Word> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|&c| c == ' ').is_some() {}
        if chars.peek().is_none() {
            return out;
        }
        let mut key = String::new();
        let mut value: Option<String> = None;
        while let Some(c) = chars.next_if(|&c| c != ' ') {
            match (c, &mut value) {
                ('=', None) => value = Some(String::new()),
                ('"', Some(v)) if v.is_empty() => v.push_str(&quoted(&mut chars)),
                ('"', None) if key.is_empty() => key.push_str(&quoted(&mut chars)),
                (c, Some(v)) => v.push(c),
                (c, None) => key.push(c),
            }
        }
        out.push(match value {
            Some(v) => Word::Pair(key, v),
            None => Word::Arg(key),
        });
    }
}

/// The rest of a quoted string, after its opening quote, up to its closing one.
fn quoted(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> String {
    let mut s = String::new();
    while let Some(c) = chars.next() {
        match c {
            '"' => break,
            '\\' => match chars.next() {
                Some('n') => s.push('\n'),
                Some('t') => s.push('\t'),
                Some('r') => s.push('\r'),
                Some(c) => s.push(c),
                None => break,
            },
            c => s.push(c),
        }
    }
    s
}

/// The value of `key` among `words`.
pub(crate) fn value<'a>(words: &'a [Word], key: &str) -> Option<&'a str> {
    words.iter().find_map(|w| match w {
        Word::Pair(k, v) if k == key => Some(v.as_str()),
        _ => None,
    })
}

/// `s` as a quoted string for a command (`AUTHENTICATE "pw"`).
pub(crate) fn quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            q.push('\\');
        }
        q.push(c);
    }
    q.push('"');
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(input: &[u8]) -> Result<Vec<Reply>, ReplyError> {
        let mut p = Parser::new();
        p.push(input)?;
        Ok(std::iter::from_fn(|| p.next()).collect())
    }

    #[test]
    fn single_and_multi_line_replies() {
        let r = all(b"250 OK\r\n").unwrap();
        assert_eq!(r.len(), 1);
        assert!(r[0].is_ok() && !r[0].is_event());
        assert_eq!(r[0].first(), "OK");
        let r = all(b"250-PROTOCOLINFO 1\r\n250-AUTH METHODS=NULL\r\n250 OK\r\n").unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].lines.len(), 3);
        assert_eq!(r[0].lines[1].text, "AUTH METHODS=NULL");
        let r = all(b"515 Authentication failed: Password did not match\r\n").unwrap();
        assert_eq!(r[0].status, 515);
        assert!(!r[0].is_ok());
    }

    #[test]
    fn data_blocks_are_dot_unescaped() {
        let input = b"250+circuit-status=\r\n1 BUILT $AA~a\r\n..hidden\r\n\r\n.\r\n250 OK\r\n";
        let r = all(input).unwrap();
        assert_eq!(r[0].lines[0].text, "circuit-status=");
        assert_eq!(
            r[0].lines[0].data.as_deref(),
            Some("1 BUILT $AA~a\n.hidden\n")
        );
        assert_eq!(r[0].lines[1].text, "OK");
    }

    #[test]
    fn events_come_apart_from_replies_byte_by_byte() {
        let input: &[u8] =
            b"650 CIRC 1 LAUNCHED\r\n250 OK\r\n650-NS\r\n650+x\r\nr a\r\n.\r\n650 OK\r\n";
        let mut p = Parser::new();
        let mut got = Vec::new();
        for b in input {
            p.push(std::slice::from_ref(b)).unwrap();
            got.extend(std::iter::from_fn(|| p.next()));
        }
        assert_eq!(got.len(), 3);
        assert!(got[0].is_event() && !got[1].is_event() && got[2].is_event());
        assert_eq!(got[2].lines[1].data.as_deref(), Some("r a"));
        // A bare LF ends a line too.
        assert_eq!(all(b"250 OK\n").unwrap()[0].first(), "OK");
    }

    #[test]
    fn malformed_input_is_an_error() {
        assert!(matches!(all(b"25 OK\r\n"), Err(ReplyError::Malformed(_))));
        assert!(matches!(all(b"abc OK\r\n"), Err(ReplyError::Malformed(_))));
        assert!(matches!(all(b"250*OK\r\n"), Err(ReplyError::Malformed(_))));
        // A non-ASCII byte where the separator goes (lossily decoded to 3 bytes).
        assert!(matches!(
            all(b"650\xa6 CIRC\r\n"),
            Err(ReplyError::Malformed(_))
        ));
        assert_eq!(all(b"250-a\r\n550 b\r\n"), Err(ReplyError::Mixed(250, 550)));
        let mut p = Parser::new();
        assert_eq!(p.push(&vec![b'x'; MAX_REPLY + 1]), Err(ReplyError::TooLong));
        // Incomplete input is no reply yet, and no error.
        assert_eq!(all(b"250-a\r\n250 O").unwrap(), vec![]);
    }

    #[test]
    fn words_split_quoted_values_and_args() {
        let w = words(r#"AUTH METHODS=COOKIE,SAFECOOKIE COOKIEFILE="/var/a b\"c" "q""#);
        assert_eq!(
            w,
            vec![
                Word::Arg("AUTH".into()),
                Word::Pair("METHODS".into(), "COOKIE,SAFECOOKIE".into()),
                Word::Pair("COOKIEFILE".into(), "/var/a b\"c".into()),
                Word::Arg("q".into()),
            ]
        );
        assert_eq!(value(&w, "COOKIEFILE"), Some("/var/a b\"c"));
        assert_eq!(value(&w, "NOPE"), None);
        assert_eq!(quote(r#"p"w\"#), r#""p\"w\\""#);
        assert_eq!(words("  "), vec![]);
    }
}
