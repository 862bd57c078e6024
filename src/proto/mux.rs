//! Per-stream state and credit-based flow control.
//!
//! Each receiver grants credit: the peer's initial stream window for every stream,
//! its session window for all of them together. DATA (and OPEN's first data) spends
//! credit at both levels; the receiver returns it with WINDOW_UPDATE once the
//! application has read the bytes. A stream whose reader is slow therefore holds at
//! most its own window of session credit and cannot stall the others until the
//! session window is used up by slow streams together.

use std::collections::VecDeque;

/// Credit a receiver hands out and takes back, with the rule for when to say so.
#[derive(Debug, Clone)]
pub struct RecvCredit {
    /// The window granted in full (the threshold for updates is half of it).
    window: u32,
    /// Bytes the peer may still send before it exceeds what we granted.
    remaining: u64,
    /// Bytes consumed (read or discarded) but not yet returned with WINDOW_UPDATE.
    unacked: u32,
}

impl RecvCredit {
    /// Start with a full window.
    pub fn new(window: u32) -> Self {
        RecvCredit {
            window,
            remaining: window as u64,
            unacked: 0,
        }
    }

    /// The peer sent `n` bytes; `false` if that exceeds the credit (a protocol violation).
    pub fn receive(&mut self, n: usize) -> bool {
        match self.remaining.checked_sub(n as u64) {
            Some(r) => {
                self.remaining = r;
                true
            }
            None => false,
        }
    }

    /// `n` bytes left the buffer; returns an increment to send once half a window is due.
    pub fn consume(&mut self, n: usize) -> Option<u32> {
        self.unacked = self.unacked.saturating_add(n as u32);
        (self.unacked >= self.window / 2).then(|| self.take())
    }

    /// Return everything consumed so far now (used when a stream's data is discarded).
    pub fn take(&mut self) -> u32 {
        let inc = std::mem::take(&mut self.unacked);
        self.remaining += inc as u64;
        inc
    }
}

/// Where a stream stands in its open handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenState {
    /// Client: OPEN sent, no OPEN_RESULT yet. Relay: OPEN received, not yet answered.
    Opening,
    /// OPEN_RESULT ok sent or received.
    Open,
}

/// One multiplexed stream.
#[derive(Debug)]
pub struct Stream {
    /// Open handshake state.
    pub open: OpenState,
    /// Bytes we may still send.
    pub send_credit: u64,
    /// We sent CLOSE.
    pub fin_sent: bool,
    /// A `write` was cut short by credit; report `Writable` when credit returns.
    pub blocked: bool,
    /// Received bytes the application has not read.
    pub recv_buf: VecDeque<u8>,
    /// The peer sent CLOSE.
    pub fin_received: bool,
    /// The application has seen the end of the stream.
    pub fin_read: bool,
    /// `Readable` was reported and the application has not drained the buffer since.
    pub readable_reported: bool,
    /// Credit we granted the peer on this stream.
    pub recv_credit: RecvCredit,
    /// Downstream timing profile requested in OPEN.
    pub profile: u8,
    /// DATA records sent and received on this stream (OPEN's first data counts as one).
    pub records: (u64, u64),
}

impl Stream {
    /// A new stream with the given credits.
    pub fn new(open: OpenState, send_credit: u32, recv_window: u32, profile: u8) -> Self {
        Stream {
            open,
            send_credit: send_credit as u64,
            fin_sent: false,
            blocked: false,
            recv_buf: VecDeque::new(),
            fin_received: false,
            fin_read: false,
            readable_reported: false,
            recv_credit: RecvCredit::new(recv_window),
            profile,
            records: (0, 0),
        }
    }

    /// Both directions are finished and the application has seen the end: forget it.
    pub fn is_done(&self) -> bool {
        self.fin_sent && self.fin_read
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credit_accounting() {
        let mut c = RecvCredit::new(100);
        assert!(c.receive(60));
        assert!(c.receive(40));
        assert!(!c.receive(1), "over the window is a violation");
        assert_eq!(c.consume(30), None);
        assert_eq!(c.consume(20), Some(50));
        assert!(c.receive(50));
        assert!(!c.receive(1));
        assert_eq!(c.consume(10), None);
        assert_eq!(c.take(), 10);
        assert!(c.receive(10));
    }
}
