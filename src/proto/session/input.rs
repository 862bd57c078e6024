//! What arrives from the peer: the handshake's messages, then records and the frames
//! they carry, each applied to the session's streams.

use std::time::Instant;

use crate::proto::replay::Refusal;

use super::*;

impl Session {
    /// Feed bytes received from the transport.
    pub fn handle_input(&mut self, now: Instant, data: &[u8]) -> Result<(), SessionError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        self.inbuf.extend_from_slice(data);
        let mut buf = std::mem::take(&mut self.inbuf);
        let r = self.process(now, &mut buf);
        self.inbuf = buf;
        r.map_err(|e| self.fail(e))
    }

    /// Parse as much of `buf` as possible, then keep the unparsed tail in it.
    fn process(&mut self, now: Instant, buf: &mut Vec<u8>) -> Result<(), SessionError> {
        let handshaking = !matches!(self.hs, Hs::Done);
        let mut at = self.process_handshake(now, buf)?;
        if self.opener.is_some() {
            loop {
                let opener = self.opener.as_mut().expect("checked");
                let Some(r) = opener.open(&mut buf[at..]).map_err(SessionError::Record)? else {
                    break;
                };
                self.stats.records_received += 1;
                self.last_rx = now;
                let frame = Frame::new_unchecked(&buf[at + r.frame.start..at + r.frame.end]);
                let repr =
                    FrameRepr::parse(&frame).map_err(|_| SessionError::Protocol("bad frame"))?;
                self.handle_frame(now, repr)?;
                at += r.consumed;
            }
        }
        buf.drain(..at);
        if handshaking && matches!(self.hs, Hs::Done) && buf.is_empty() {
            // msg1 (or the relay's flight) grew the buffer to 1.3-1.8 KB; an idle session
            // need not keep that.
            *buf = Vec::new();
        }
        Ok(())
    }

    /// Run the handshake over the head of `buf`, a step each time the bytes its next part
    /// needs are there; the bytes it took.
    fn process_handshake(&mut self, now: Instant, buf: &[u8]) -> Result<usize, SessionError> {
        let mut at = 0;
        loop {
            let need = match &self.hs {
                Hs::Done => return Ok(at),
                Hs::Failed => return Err(SessionError::Handshake),
                Hs::ClientAwaitReply(h)
                | Hs::ClientAwaitPad2(h)
                | Hs::ServerAwaitMsg1(h)
                | Hs::ServerAwaitPad1(h, ..)
                | Hs::ServerAwaitMsg3(h, _)
                | Hs::ServerAwaitPad3(h) => h.wants(),
            };
            if buf.len() - at < need {
                return Ok(at);
            }
            let hs = std::mem::replace(&mut self.hs, Hs::Failed);
            self.hs = self
                .handshake_step(now, hs, &buf[at..at + need])
                .map_err(|f| {
                    if !self.is_client {
                        self.fault = Some(f);
                    }
                    SessionError::Handshake
                })?;
            at += need;
        }
    }

    /// One step of the handshake, given the bytes of its part; a failure says why (the
    /// relay counts it; the wire sees the same silence for each).
    fn handshake_step(&mut self, now: Instant, hs: Hs, part: &[u8]) -> Result<Hs, HandshakeFault> {
        let failed = |_| HandshakeFault::Garbage;
        Ok(match hs {
            Hs::ServerAwaitMsg1(mut h) => {
                let first = h.read_msg1(part).map_err(failed)?;
                // Not from an allowed key: the silence of a msg1 that did not authenticate.
                // Checked before the replay cache, so only allowed keys take entries in it.
                let admitted = self
                    .admission
                    .as_ref()
                    .expect("relay")
                    .read()
                    .check_msg1(&first.ephemeral, first.stamp_ms, &first.hint, &first.tag)
                    .ok_or(HandshakeFault::UnknownKey)?;
                Hs::ServerAwaitPad1(h, first, admitted)
            }
            Hs::ServerAwaitPad1(mut h, first, Admitted { public, mask }) => {
                h.read_pad1(mask, part).map_err(failed)?;
                // Stale or replayed: the same silence.
                let now_ms = self.cfg.clock.unix(now).as_millis() as u64;
                let (replay, source) = self.replay.as_ref().expect("relay");
                replay
                    .lock()
                    .admit(&first.ephemeral, first.stamp_ms, now_ms, *source)
                    .map_err(|r| match r {
                        Refusal::Stale | Refusal::BeforeStart => HandshakeFault::Stale,
                        Refusal::Replayed => HandshakeFault::Replayed,
                        Refusal::Full | Refusal::SourceFull => HandshakeFault::CacheFull,
                    })?;
                // Only now the ML-KEM work: everything cheaper has passed.
                let reply = h.write_reply(&mut *self.rng).map_err(failed)?;
                self.out.extend_from_slice(&reply);
                self.last_rx = now;
                Hs::ServerAwaitMsg3(h, public)
            }
            Hs::ServerAwaitMsg3(mut h, proved) => {
                h.read_msg3(part).map_err(failed)?;
                // The key msg1 proved, and still on the list (a reload may have come
                // between): else a client could prove one key and present another.
                let allowed = h.peer_static() == Some(proved)
                    && self
                        .admission
                        .as_ref()
                        .is_some_and(|a| a.read().contains(&proved));
                if !allowed {
                    return Err(HandshakeFault::UnknownKey);
                }
                Hs::ServerAwaitPad3(h)
            }
            Hs::ServerAwaitPad3(h) => {
                let o = h.finish_relay(part).map_err(failed)?;
                self.established(now, o);
                Hs::Done
            }
            Hs::ClientAwaitReply(mut h) => {
                h.read_reply(part).map_err(failed)?;
                Hs::ClientAwaitPad2(h)
            }
            Hs::ClientAwaitPad2(h) => {
                let (m3, o) = h.finish_client(part, &mut *self.rng).map_err(failed)?;
                self.out.extend_from_slice(&m3);
                // A first round-trip estimate, high rather than low (it includes the
                // transport's own set-up), so a health check of a slow path does not
                // take it for a silent one before a PONG has measured it.
                self.rtt.get_or_insert(now.duration_since(self.started));
                self.established(now, o);
                Hs::Done
            }
            Hs::Done | Hs::Failed => return Err(HandshakeFault::Garbage),
        })
    }

    fn established(&mut self, now: Instant, o: noise::HandshakeOutput) {
        self.sealer = Some(Sealer::new(o.cipher, o.send));
        self.opener = Some(Opener::new(o.cipher, o.recv));
        self.send_credit = o.peer_params.session_window as u64;
        self.peer_params = Some(o.peer_params);
        self.last_rx = now;
        self.last_tx = now;
        self.key_since = now;
        // The handshake's flights grew `out`: give that back now if it is drained (the
        // relay: its flight left a round trip ago), else at its next full drain.
        if self.out_start == self.out.len() {
            self.out = Vec::new();
            self.out_start = 0;
        } else {
            self.shed_out = true;
        }
        self.events.push_back(Event::Connected {
            peer: o.peer_static,
        });
    }

    fn readable(events: &mut VecDeque<Event>, stream: u32, s: &mut Stream) {
        if !s.readable_reported {
            s.readable_reported = true;
            events.push_back(Event::Readable { stream });
        }
    }

    /// Take stream data into the buffer, or discard it (returning credit) if the stream is gone.
    fn take_data(&mut self, now: Instant, stream: u32, data: &[u8]) -> Result<(), SessionError> {
        if !self.recv_credit.receive(data.len()) {
            return Err(SessionError::Protocol("session flow control exceeded"));
        }
        self.stats.bytes_received += data.len() as u64;
        match self.streams.get_mut(&stream) {
            Some(s) => {
                if s.fin_received {
                    return Err(SessionError::Protocol("data after close"));
                }
                if !s.recv_credit.receive(data.len()) {
                    return Err(SessionError::Protocol("stream flow control exceeded"));
                }
                s.records.1 += 1;
                if !data.is_empty() {
                    s.recv_buf.extend(data);
                    Self::readable(&mut self.events, stream, s);
                }
            }
            None => self.session_consumed(now, data.len()),
        }
        Ok(())
    }

    /// Frames for a stream we do not hold: fine if it existed once (late frames after
    /// a reset), a violation if it never did.
    fn check_unknown(&self, stream: u32) -> Result<(), SessionError> {
        let ours = stream % 2 == 1;
        let ever = if self.is_client == ours {
            stream < self.next_stream
        } else {
            stream <= self.highest_peer_stream
        };
        if ever {
            Ok(())
        } else {
            Err(SessionError::Protocol("frame for a stream never opened"))
        }
    }

    fn handle_frame(&mut self, now: Instant, f: FrameRepr<'_>) -> Result<(), SessionError> {
        match f {
            FrameRepr::Padding => {}
            FrameRepr::KeyUpdate => {
                self.opener.as_mut().expect("established").update_key();
                self.stats.key_updates_received += 1;
            }
            FrameRepr::Ping { payload } => self.seal(now, &FrameRepr::Pong { payload }, 0),
            FrameRepr::Pong { payload } => {
                if let Some((seq, sent)) = self.ping {
                    if seq.to_be_bytes() == payload {
                        self.rtt = Some(now.duration_since(sent));
                        self.ping = None;
                    }
                }
            }
            FrameRepr::Open {
                stream,
                profile,
                dest,
                data,
            } => {
                if self.is_client {
                    return Err(SessionError::Protocol("OPEN sent to a client"));
                }
                if stream % 2 != 1 || stream <= self.highest_peer_stream {
                    return Err(SessionError::Protocol("OPEN with a stale stream id"));
                }
                self.highest_peer_stream = stream;
                self.stats.streams_opened += 1;
                let peer = self.peer_params.expect("established");
                if self.streams.len() >= self.cfg.max_streams {
                    self.take_data(now, 0, data)?;
                    self.seal(
                        now,
                        &FrameRepr::OpenResult {
                            stream,
                            result: Err(OpenError::TooManyStreams),
                        },
                        0,
                    );
                    return Ok(());
                }
                let s = Stream::new(
                    OpenState::Opening,
                    peer.stream_window,
                    self.cfg.stream_window,
                    profile,
                );
                self.streams.insert(stream, s);
                self.events.push_back(Event::Opened {
                    stream,
                    dest,
                    profile,
                });
                self.take_data(now, stream, data)?;
            }
            FrameRepr::OpenResult { stream, result } => {
                if !self.is_client {
                    return Err(SessionError::Protocol("OPEN_RESULT sent to a relay"));
                }
                match self.streams.get_mut(&stream) {
                    Some(s) if s.open == OpenState::Opening => {
                        s.open = OpenState::Open;
                        self.events.push_back(Event::OpenResult { stream, result });
                        if result.is_err() {
                            self.drop_stream(now, stream);
                        }
                    }
                    Some(_) => return Err(SessionError::Protocol("second OPEN_RESULT")),
                    None => self.check_unknown(stream)?,
                }
            }
            FrameRepr::Data { stream, data } => {
                if !self.streams.contains_key(&stream) {
                    self.check_unknown(stream)?;
                }
                self.take_data(now, stream, data)?;
            }
            FrameRepr::WindowUpdate {
                stream: 0,
                increment,
            } => {
                self.send_credit += increment as u64;
                for (&id, s) in self.streams.iter_mut() {
                    if s.blocked && s.send_credit > 0 {
                        s.blocked = false;
                        self.events.push_back(Event::Writable { stream: id });
                    }
                }
            }
            FrameRepr::WindowUpdate { stream, increment } => match self.streams.get_mut(&stream) {
                Some(s) => {
                    s.send_credit += increment as u64;
                    if s.blocked && self.send_credit > 0 {
                        s.blocked = false;
                        self.events.push_back(Event::Writable { stream });
                    }
                }
                None => self.check_unknown(stream)?,
            },
            FrameRepr::Close { stream } => match self.streams.get_mut(&stream) {
                Some(s) => {
                    if s.fin_received {
                        return Err(SessionError::Protocol("second CLOSE"));
                    }
                    s.fin_received = true;
                    s.readable_reported = false;
                    Self::readable(&mut self.events, stream, s);
                }
                None => self.check_unknown(stream)?,
            },
            FrameRepr::Reset { stream, code } => {
                if self.streams.contains_key(&stream) {
                    self.drop_stream(now, stream);
                    self.events.push_back(Event::Reset { stream, code });
                } else {
                    self.check_unknown(stream)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::proto::sim::Pair;

    /// Under AES-256-GCM a sender rekeys right after a key's 2^24th record whatever its
    /// config allows (docs/PROTOCOL.md, section 3); under ChaCha20-Poly1305 the config's
    /// limit (2^32 by default) holds. Both counters are moved to just before the cap.
    #[cfg(feature = "aead-ring")]
    #[test]
    fn the_aes_record_cap_forces_a_key_update() {
        use crate::proto::SessionConfig;
        use crate::proto::aead::{Cipher, OFFER_AES_256_GCM};
        for (offer, cipher, updates) in [
            (OFFER_AES_256_GCM, Cipher::Aes256Gcm, 1),
            (0, Cipher::ChaCha20Poly1305, 0),
        ] {
            let cfg = || SessionConfig {
                ciphers: offer,
                ..SessionConfig::default()
            };
            let mut p = Pair::with_config(1, cfg(), cfg());
            p.connect();
            assert_eq!(p.client.cipher(), Some(cipher));
            let n = (1 << 24) - 1;
            p.client.sealer.as_mut().unwrap().skip_to(n);
            p.server.opener.as_mut().unwrap().skip_to(n);
            p.client.probe(p.now).unwrap();
            p.drive();
            assert_eq!(p.client.stats().key_updates_sent, updates, "{cipher:?}");
            assert_eq!(p.server.stats().key_updates_received, updates, "{cipher:?}");
            // The records after it open under the next key.
            p.client.probe(p.now).unwrap();
            p.drive();
            assert!(p.server_error.is_none(), "{:?}", p.server_error);
            assert_eq!(
                p.client.cipher(),
                Some(cipher),
                "the update keeps the cipher"
            );
        }
    }

    /// Regression: protocol 4's flights (1.1-1.8 KB) left their capacity in both buffers
    /// of every session for its life, 1.5 KiB more per idle session at the relay.
    #[test]
    fn an_idle_session_keeps_no_handshake_buffers() {
        let mut p = Pair::new(1);
        p.connect();
        for s in [&p.client, &p.server] {
            assert_eq!((s.inbuf.capacity(), s.out.capacity()), (0, 0));
        }
    }
}
