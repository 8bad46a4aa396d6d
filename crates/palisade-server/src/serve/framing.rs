//! Spotting `Content-Length` together with `Transfer-Encoding` in a request head.
//!
//! hyper resolves that ambiguity itself (the message is read as chunked, `Content-Length` is
//! dropped and the connection closes after the response), so no service can see it happened.
//! A gateway must refuse such requests outright (a request-smuggling attempt), so in gateway
//! mode the connection's reader scans each request head as it arrives: only the first bytes
//! of each header line are looked at, and only while no request is in progress. Heads that
//! arrive pipelined behind a request still in progress are not scanned; hyper's own handling
//! (and the gateway re-framing every body) still applies to them.

/// The scan of one request head, fed the bytes as they are read.
#[derive(Debug, Clone)]
pub(crate) struct HeadScan {
    /// The lower-cased start of the current line, up to the longest name we look for.
    name: [u8; NAME_MAX],
    len: usize,
    /// Still collecting the current line's name (no `:` yet, not too long).
    collecting: bool,
    /// The request line (first line) is not a header.
    first_line: bool,
    content_length: bool,
    transfer_encoding: bool,
    done: bool,
}

const NAME_MAX: usize = 18;

impl HeadScan {
    pub(crate) fn new() -> Self {
        Self {
            name: [0; NAME_MAX],
            len: 0,
            collecting: true,
            first_line: true,
            content_length: false,
            transfer_encoding: false,
            done: false,
        }
    }

    /// Feeds the next bytes of the head. `Some(ambiguous)` once the head has ended.
    pub(crate) fn feed(&mut self, mut bytes: &[u8]) -> Option<bool> {
        while !self.done && !bytes.is_empty() {
            if !self.collecting {
                // Skip to the next line.
                match bytes.iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        bytes = &bytes[i + 1..];
                        self.next_line();
                    }
                    None => return None,
                }
                continue;
            }
            let b = bytes[0];
            bytes = &bytes[1..];
            match b {
                b'\n' => {
                    if self.len == 0 && !self.first_line {
                        // The blank line: the head is complete.
                        self.done = true;
                        return Some(self.content_length && self.transfer_encoding);
                    }
                    self.next_line();
                }
                b'\r' if self.len == 0 => {}
                b':' if !self.first_line => {
                    match &self.name[..self.len] {
                        b"content-length" => self.content_length = true,
                        b"transfer-encoding" => self.transfer_encoding = true,
                        _ => {}
                    }
                    self.collecting = false;
                }
                _ if self.len < NAME_MAX => {
                    self.name[self.len] = b.to_ascii_lowercase();
                    self.len += 1;
                }
                _ => self.collecting = false,
            }
        }
        None
    }

    fn next_line(&mut self) {
        self.first_line = false;
        self.len = 0;
        self.collecting = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(parts: &[&[u8]]) -> Option<bool> {
        let mut s = HeadScan::new();
        parts.iter().find_map(|p| s.feed(p))
    }

    #[test]
    fn both_length_fields_in_one_head_are_ambiguous() {
        let head: &[u8] = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert_eq!(scan(&[head]), Some(true));
        // Split anywhere, even inside a name, the result is the same.
        for i in 1..head.len() {
            assert_eq!(scan(&[&head[..i], &head[i..]]), Some(true), "split at {i}");
        }
        assert_eq!(
            scan(&[b"POST /a HTTP/1.1\r\ntransfer-ENCODING: chunked\r\nCONTENT-length: 4\r\n\r\n"]),
            Some(true)
        );
    }

    #[test]
    fn one_length_field_or_lookalikes_are_fine() {
        for head in [
            &b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nabcd"[..],
            b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"POST /a HTTP/1.1\r\nX-Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST /content-length: HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nX-Note: content-length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert_eq!(
                scan(&[head]),
                Some(false),
                "{}",
                String::from_utf8_lossy(head)
            );
        }
    }

    #[test]
    fn an_unfinished_head_has_no_verdict() {
        assert_eq!(scan(&[b"POST /a HTTP/1.1\r\nContent-Length: 4\r\n"]), None);
    }
}
