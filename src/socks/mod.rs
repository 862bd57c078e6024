//! SOCKS5 (RFC 1928, with RFC 1929 username/password), sans-IO, both sides of the
//! handshake: [`server`] is what `qnet socks` speaks to its clients, [`client`] is how an
//! engine asks a SOCKS5 upstream to connect it (the client reaching its relay, the relay
//! reaching a destination through an exit proxy such as Tor). This file holds the wire
//! values both sides share.

mod client;
mod server;

pub(crate) use client::{ClientHandshake, ClientProgress, isolation_credentials};
pub use server::SocksAuth;
pub(crate) use server::{Handshake, Progress, connect_reply};

/// The protocol version byte of every SOCKS5 message but the RFC 1929 ones.
const VERSION: u8 = 5;
/// The version byte of an RFC 1929 username/password exchange.
const AUTH_VERSION: u8 = 1;

/// Authentication methods offered in the greeting.
const METHOD_NONE: u8 = 0;
const METHOD_USER_PASSWORD: u8 = 2;
/// The server's answer when no offered method is acceptable.
const METHOD_NO_ACCEPTABLE: u8 = 0xFF;

/// The one command qnet carries.
const CMD_CONNECT: u8 = 1;

/// Address types of a request or reply; `ATYP_NAME` is followed by a length byte.
const ATYP_V4: u8 = 1;
const ATYP_NAME: u8 = 3;
const ATYP_V6: u8 = 4;

/// Reply codes (RFC 1928 section 6).
const REP_SUCCEEDED: u8 = 0x00;
const REP_GENERAL: u8 = 0x01;
const REP_NOT_ALLOWED: u8 = 0x02;
const REP_NET_UNREACH: u8 = 0x03;
const REP_HOST_UNREACH: u8 = 0x04;
const REP_REFUSED: u8 = 0x05;
const REP_TTL: u8 = 0x06;
const REP_CMD: u8 = 0x07;
const REP_ATYP: u8 = 0x08;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Destination;

    #[test]
    fn client_handshake_against_our_server() {
        for creds in [None, Some((b"user".to_vec(), b"pw".to_vec()))] {
            let auth = SocksAuth {
                credentials: creds.clone(),
            };
            let mut server = Handshake::new(auth);
            let target = Destination::Name("relay.example".into(), 7000);
            let (mut client, mut to_server) = ClientHandshake::start(target.clone(), creds);
            let mut connected = false;
            for _ in 0..4 {
                match server.feed(&to_server) {
                    Progress::More { reply } => match client.feed(&reply).unwrap() {
                        ClientProgress::More(out) => to_server = out,
                        ClientProgress::Done { .. } => panic!("done before the CONNECT"),
                    },
                    Progress::Connect { reply, dest, .. } => {
                        assert_eq!(dest, target);
                        let mut r = reply;
                        r.extend(connect_reply(Ok(())));
                        r.extend_from_slice(b"tunnel");
                        // Fed in one piece: the proxy's bytes end where the tunnel's begin.
                        let ClientProgress::Done { consumed } = client.feed(&r).unwrap() else {
                            panic!("not done")
                        };
                        assert_eq!(&r[consumed..], b"tunnel");
                        connected = true;
                        break;
                    }
                    Progress::Refuse(r) => panic!("{r:?}"),
                }
            }
            assert!(connected);
        }
    }
}
