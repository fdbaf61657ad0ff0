//! The sync protocol on the wire (docs/scale-out.md, "Affinity sync"): the
//! handshake that proves both ends know the shared key and derives the
//! session's keys from both sides' nonces, the authenticated frames, and the
//! fixed-width encoding of entries. Pure functions over byte buffers, so
//! every way to attack them is tested without a socket.

use std::net::{Ipv4Addr, SocketAddrV4};

use hmac::{Hmac, Mac as _};
use lb_common::VipKey;
use sha2::Sha256;

use crate::lb::sync::SyncEntry;

type HmacSha256 = Hmac<Sha256>;

/// The protocol's version: in every hello and every frame. A node refuses
/// any other (there is no negotiation: every node of a cluster runs one).
pub const VERSION: u8 = 1;
/// The first bytes of a hello, so that a stray client is told from a peer.
pub const MAGIC: [u8; 4] = *b"SLBS";
pub const NONCE_LEN: usize = 32;
pub const MAC_LEN: usize = 32;
/// magic, version, nonce, the sender's listen address (4 + 2).
pub const HELLO_LEN: usize = 4 + 1 + NONCE_LEN + 6;
/// The shortest key accepted: 256 bits, the HMAC's own strength.
pub const MIN_KEY_LEN: usize = 32;
/// Bytes of one encoded entry.
pub const ENTRY_LEN: usize = 4 + 2 + 1 + 4 + 4 + 2 + 8 + 4;
/// The largest frame body (after its length field) a node accepts: a
/// length beyond it drops the connection before anything is allocated.
pub const MAX_FRAME: usize = 64 * 1024;
/// version, type, sequence number.
const HEADER_LEN: usize = 1 + 1 + 8;
/// The most entries one frame carries: a batch header is a count (u16) and
/// the sender's clock (u64).
pub const MAX_ENTRIES_PER_FRAME: usize = (MAX_FRAME - HEADER_LEN - MAC_LEN - 2 - 8) / ENTRY_LEN;

/// The shared secret, as read from `key_file`.
#[derive(Clone)]
pub struct Key(Vec<u8>);

impl Key {
    /// None when shorter than `MIN_KEY_LEN`.
    pub fn new(bytes: Vec<u8>) -> Option<Self> {
        (bytes.len() >= MIN_KEY_LEN).then_some(Self(bytes))
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

fn mac_of(key: &[u8], parts: &[&[u8]]) -> [u8; MAC_LEN] {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes a key of any length");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

fn verify(key: &[u8], parts: &[&[u8]], tag: &[u8]) -> bool {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes a key of any length");
    for p in parts {
        m.update(p);
    }
    // Constant time: a timing difference must not tell a forger how many
    // bytes of a tag were right.
    m.verify_slice(tag).is_ok()
}

/// Why a connection was dropped; each counted (`stickylb_sync_rejected_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reject {
    /// Not a stickylb sync hello.
    Magic,
    /// Another protocol version.
    Version,
    /// The other side does not know the key (or a hello was forged).
    Handshake,
    /// A frame whose HMAC is wrong: forged, altered, or from another session.
    FrameMac,
    /// A valid frame out of order: replayed, reordered or dropped.
    Sequence,
    /// A length beyond `MAX_FRAME`.
    Oversize,
    /// The connection ended inside a hello or a frame.
    Truncated,
    /// An authenticated frame that does not parse.
    Malformed,
    /// An authenticated node that is not one of `peers`.
    UnknownPeer,
    /// A connection from an address no peer has: closed before its hello.
    UnknownAddress,
    /// More connections in their handshake from one address than allowed.
    TooManyHandshakes,
}

impl Reject {
    pub const ALL: [Reject; 11] = [
        Reject::Magic,
        Reject::Version,
        Reject::Handshake,
        Reject::FrameMac,
        Reject::Sequence,
        Reject::Oversize,
        Reject::Truncated,
        Reject::Malformed,
        Reject::UnknownPeer,
        Reject::UnknownAddress,
        Reject::TooManyHandshakes,
    ];

    /// Its label in metrics and status.
    pub fn name(self) -> &'static str {
        match self {
            Reject::Magic => "magic",
            Reject::Version => "version",
            Reject::Handshake => "handshake",
            Reject::FrameMac => "frame_mac",
            Reject::Sequence => "sequence",
            Reject::Oversize => "oversize",
            Reject::Truncated => "truncated",
            Reject::Malformed => "malformed",
            Reject::UnknownPeer => "unknown_peer",
            Reject::UnknownAddress => "unknown_address",
            Reject::TooManyHandshakes => "too_many_handshakes",
        }
    }
}

impl std::fmt::Display for Reject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One side's hello: its nonce and the address it listens on (the name by
/// which its peers know it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    pub nonce: [u8; NONCE_LEN],
    pub node: SocketAddrV4,
}

impl Hello {
    pub fn new(node: SocketAddrV4) -> std::io::Result<Self> {
        let mut nonce = [0; NONCE_LEN];
        fill_random(&mut nonce)?;
        Ok(Self { nonce, node })
    }

    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let mut out = [0; HELLO_LEN];
        out[..4].copy_from_slice(&MAGIC);
        out[4] = VERSION;
        out[5..5 + NONCE_LEN].copy_from_slice(&self.nonce);
        out[5 + NONCE_LEN..9 + NONCE_LEN].copy_from_slice(&self.node.ip().octets());
        out[9 + NONCE_LEN..].copy_from_slice(&self.node.port().to_be_bytes());
        out
    }

    pub fn decode(b: &[u8; HELLO_LEN]) -> Result<Self, Reject> {
        if b[..4] != MAGIC {
            return Err(Reject::Magic);
        }
        if b[4] != VERSION {
            return Err(Reject::Version);
        }
        let mut nonce = [0; NONCE_LEN];
        nonce.copy_from_slice(&b[5..5 + NONCE_LEN]);
        let ip: [u8; 4] = b[5 + NONCE_LEN..9 + NONCE_LEN].try_into().expect("4 bytes");
        let port = u16::from_be_bytes([b[9 + NONCE_LEN], b[10 + NONCE_LEN]]);
        Ok(Self {
            nonce,
            node: SocketAddrV4::new(ip.into(), port),
        })
    }
}

/// Fills `buf` from the kernel's CSPRNG (getrandom(2)).
pub fn fill_random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: the pointer and length describe the unfilled rest of buf.
        let n = unsafe { libc::getrandom(buf[done..].as_mut_ptr().cast(), buf.len() - done, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(())
}

/// Which end of a connection: the side that connected (client) or accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

/// What both hellos bind: each proof covers both nonces and both names, so
/// it is good for this connection only.
fn transcript(client: &Hello, server: &Hello) -> [u8; 2 * HELLO_LEN] {
    let mut t = [0; 2 * HELLO_LEN];
    t[..HELLO_LEN].copy_from_slice(&client.encode());
    t[HELLO_LEN..].copy_from_slice(&server.encode());
    t
}

/// A side's proof that it knows the key. The labels differ, so that one
/// side's proof can never be played back as the other's.
pub fn proof(key: &Key, role: Role, client: &Hello, server: &Hello) -> [u8; MAC_LEN] {
    let label: &[u8] = match role {
        Role::Client => b"stickylb sync client proof",
        Role::Server => b"stickylb sync server proof",
    };
    mac_of(&key.0, &[label, &transcript(client, server)])
}

pub fn check_proof(
    key: &Key,
    role: Role,
    client: &Hello,
    server: &Hello,
    tag: &[u8],
) -> Result<(), Reject> {
    let label: &[u8] = match role {
        Role::Client => b"stickylb sync client proof",
        Role::Server => b"stickylb sync server proof",
    };
    if verify(&key.0, &[label, &transcript(client, server)], tag) {
        Ok(())
    } else {
        Err(Reject::Handshake)
    }
}

/// The keys of one connection's two directions, from the shared key and
/// both nonces: a frame of another connection, or one reflected back at its
/// sender, fails its HMAC.
pub fn session_keys(key: &Key, client: &Hello, server: &Hello) -> (Sealer, Opener) {
    let session = mac_of(
        &key.0,
        &[b"stickylb sync session", &transcript(client, server)],
    );
    let c2s = mac_of(&session, &[b"client to server"]);
    let s2c = mac_of(&session, &[b"server to client"]);
    (Sealer { key: c2s, seq: 0 }, Opener { key: s2c, seq: 0 })
}

/// The same keys as the server sees them: it seals what the client opens.
pub fn session_keys_server(key: &Key, client: &Hello, server: &Hello) -> (Sealer, Opener) {
    let (c2s, s2c) = session_keys(key, client, server);
    (
        Sealer {
            key: s2c.key,
            seq: 0,
        },
        Opener {
            key: c2s.key,
            seq: 0,
        },
    )
}

/// What a frame carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// New or changed pins; `sent_ms`: the sender's clock when it sent them
    /// (for the receiver's lag estimate, see `lag_ms`).
    Batch {
        sent_ms: u64,
        entries: Vec<SyncEntry>,
    },
    /// Asks for the whole table.
    SnapshotRequest,
    /// A part of the table.
    SnapshotChunk {
        sent_ms: u64,
        entries: Vec<SyncEntry>,
    },
    /// The table has been sent: `total` entries.
    SnapshotEnd { total: u64 },
    /// No table for this request: the sender has not joined its cluster
    /// yet (its table may be empty or partial), or is sending one already.
    SnapshotRefused,
    /// The sender's pins that won over pins this node sent it (not timed
    /// for the lag: they answer this node's entries).
    Corrections {
        sent_ms: u64,
        entries: Vec<SyncEntry>,
    },
}

mod kind {
    pub const BATCH: u8 = 1;
    pub const SNAPSHOT_REQUEST: u8 = 2;
    pub const SNAPSHOT_CHUNK: u8 = 3;
    pub const SNAPSHOT_END: u8 = 4;
    pub const SNAPSHOT_REFUSED: u8 = 5;
    pub const CORRECTIONS: u8 = 6;
}

/// Seals one direction's frames: numbers them and signs them.
#[derive(Debug)]
pub struct Sealer {
    key: [u8; MAC_LEN],
    seq: u64,
}

impl Sealer {
    /// The frame for `msg`, its length field included. Entries beyond
    /// `MAX_ENTRIES_PER_FRAME` are the caller's bug (it splits batches).
    pub fn seal(&mut self, msg: &Message) -> Vec<u8> {
        let (kind, payload) = encode_message(msg);
        let seq = self.seq;
        self.seq += 1;
        let body_len = HEADER_LEN + payload.len() + MAC_LEN;
        assert!(body_len <= MAX_FRAME, "a frame of {body_len} bytes");
        let mut out = Vec::with_capacity(4 + body_len);
        out.extend_from_slice(&(body_len as u32).to_be_bytes());
        out.push(VERSION);
        out.push(kind);
        out.extend_from_slice(&seq.to_be_bytes());
        out.extend_from_slice(&payload);
        let tag = mac_of(&self.key, &[&out[4..]]);
        out.extend_from_slice(&tag);
        out
    }
}

/// Opens the other direction's frames, in order.
#[derive(Debug)]
pub struct Opener {
    key: [u8; MAC_LEN],
    seq: u64,
}

/// The length a frame's first four bytes announce, checked against the bound
/// before anything is read or allocated.
pub fn frame_len(prefix: [u8; 4]) -> Result<usize, Reject> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_FRAME {
        return Err(Reject::Oversize);
    }
    if len < HEADER_LEN + MAC_LEN {
        return Err(Reject::Truncated);
    }
    Ok(len)
}

impl Opener {
    /// The message of `body` (a frame after its length field). The HMAC is
    /// checked first, so nothing of a forged frame is parsed; the version
    /// and sequence number it covers after.
    pub fn open(&mut self, body: &[u8]) -> Result<Message, Reject> {
        if body.len() > MAX_FRAME {
            return Err(Reject::Oversize);
        }
        if body.len() < HEADER_LEN + MAC_LEN {
            return Err(Reject::Truncated);
        }
        let (signed, tag) = body.split_at(body.len() - MAC_LEN);
        if !verify(&self.key, &[signed], tag) {
            return Err(Reject::FrameMac);
        }
        if signed[0] != VERSION {
            return Err(Reject::Version);
        }
        let seq = u64::from_be_bytes(signed[2..10].try_into().expect("8 bytes"));
        if seq != self.seq {
            return Err(Reject::Sequence);
        }
        self.seq += 1;
        decode_message(signed[1], &signed[HEADER_LEN..])
    }
}

fn encode_message(msg: &Message) -> (u8, Vec<u8>) {
    let entries_payload = |sent_ms: u64, entries: &[SyncEntry]| {
        let count = u16::try_from(entries.len()).expect("batches are split below u16::MAX");
        let mut p = Vec::with_capacity(10 + entries.len() * ENTRY_LEN);
        p.extend_from_slice(&count.to_be_bytes());
        p.extend_from_slice(&sent_ms.to_be_bytes());
        for e in entries {
            p.extend_from_slice(&encode_entry(e));
        }
        p
    };
    match msg {
        Message::Batch { sent_ms, entries } => (kind::BATCH, entries_payload(*sent_ms, entries)),
        Message::SnapshotRequest => (kind::SNAPSHOT_REQUEST, Vec::new()),
        Message::SnapshotChunk { sent_ms, entries } => {
            (kind::SNAPSHOT_CHUNK, entries_payload(*sent_ms, entries))
        }
        Message::SnapshotEnd { total } => (kind::SNAPSHOT_END, total.to_be_bytes().to_vec()),
        Message::SnapshotRefused => (kind::SNAPSHOT_REFUSED, Vec::new()),
        Message::Corrections { sent_ms, entries } => {
            (kind::CORRECTIONS, entries_payload(*sent_ms, entries))
        }
    }
}

fn decode_entries(p: &[u8]) -> Result<(u64, Vec<SyncEntry>), Reject> {
    if p.len() < 10 {
        return Err(Reject::Malformed);
    }
    let count = u16::from_be_bytes([p[0], p[1]]) as usize;
    let sent_ms = u64::from_be_bytes(p[2..10].try_into().expect("8 bytes"));
    let rest = &p[10..];
    if rest.len() != count * ENTRY_LEN {
        return Err(Reject::Malformed);
    }
    let entries = rest
        .chunks_exact(ENTRY_LEN)
        .map(|c| decode_entry(c.try_into().expect("ENTRY_LEN bytes")))
        .collect::<Result<_, _>>()?;
    Ok((sent_ms, entries))
}

fn decode_message(kind: u8, p: &[u8]) -> Result<Message, Reject> {
    match kind {
        kind::BATCH => {
            let (sent_ms, entries) = decode_entries(p)?;
            Ok(Message::Batch { sent_ms, entries })
        }
        kind::SNAPSHOT_REQUEST if p.is_empty() => Ok(Message::SnapshotRequest),
        kind::SNAPSHOT_CHUNK => {
            let (sent_ms, entries) = decode_entries(p)?;
            Ok(Message::SnapshotChunk { sent_ms, entries })
        }
        kind::SNAPSHOT_END if p.len() == 8 => Ok(Message::SnapshotEnd {
            total: u64::from_be_bytes(p.try_into().expect("8 bytes")),
        }),
        kind::SNAPSHOT_REFUSED if p.is_empty() => Ok(Message::SnapshotRefused),
        kind::CORRECTIONS => {
            let (sent_ms, entries) = decode_entries(p)?;
            Ok(Message::Corrections { sent_ms, entries })
        }
        _ => Err(Reject::Malformed),
    }
}

/// An entry, fixed width, big-endian: VIP address, port, protocol; client;
/// backend address, port; pinned_ms; idle_ms.
pub fn encode_entry(e: &SyncEntry) -> [u8; ENTRY_LEN] {
    let mut b = [0; ENTRY_LEN];
    // VipKey holds its address and port in network byte order already.
    b[0..4].copy_from_slice(&e.vip.addr);
    b[4..6].copy_from_slice(&e.vip.port);
    b[6] = e.vip.proto;
    b[7..11].copy_from_slice(&e.client.octets());
    b[11..15].copy_from_slice(&e.backend.ip().octets());
    b[15..17].copy_from_slice(&e.backend.port().to_be_bytes());
    b[17..25].copy_from_slice(&e.pinned_ms.to_be_bytes());
    b[25..29].copy_from_slice(&e.idle_ms.to_be_bytes());
    b
}

pub fn decode_entry(b: &[u8; ENTRY_LEN]) -> Result<SyncEntry, Reject> {
    let proto = b[6];
    if proto != lb_common::proto::TCP && proto != lb_common::proto::UDP {
        return Err(Reject::Malformed);
    }
    let ip = |at: usize| Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3]);
    Ok(SyncEntry {
        vip: VipKey::new(ip(0), u16::from_be_bytes([b[4], b[5]]), proto),
        client: ip(7),
        backend: SocketAddrV4::new(ip(11), u16::from_be_bytes([b[15], b[16]])),
        pinned_ms: u64::from_be_bytes(b[17..25].try_into().expect("8 bytes")),
        idle_ms: u32::from_be_bytes(b[25..29].try_into().expect("4 bytes")),
    })
}

/// How long after the sender's data path last saw the client an entry was
/// applied here: `now_ms` − (`sent_ms` − idle_ms), both clocks the nodes'
/// wall clocks, so any skew between them adds to it (0 when negative).
pub fn lag_ms(now_ms: u64, sent_ms: u64, e: &SyncEntry) -> u64 {
    now_ms.saturating_sub(sent_ms.saturating_sub(u64::from(e.idle_ms)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> Key {
        Key::new(vec![b; 32]).unwrap()
    }

    fn entry(i: u32) -> SyncEntry {
        SyncEntry {
            vip: VipKey::new(Ipv4Addr::new(192, 0, 2, 10), 443, lb_common::proto::UDP),
            client: Ipv4Addr::from(0x0a00_0000 + i),
            backend: SocketAddrV4::new(Ipv4Addr::new(10, 1, 0, 2), 8443),
            pinned_ms: 0x0102_0304_0506_0708,
            idle_ms: 0x0a0b_0c0d,
        }
    }

    fn hellos() -> (Hello, Hello) {
        (
            Hello::new("10.0.0.1:7946".parse().unwrap()).unwrap(),
            Hello::new("10.0.0.2:7946".parse().unwrap()).unwrap(),
        )
    }

    /// Both ends of one connection: (client's sealer, server's opener) and
    /// the other direction.
    fn session(k: &Key, c: &Hello, s: &Hello) -> ((Sealer, Opener), (Sealer, Opener)) {
        (session_keys(k, c, s), session_keys_server(k, c, s))
    }

    fn body(frame: &[u8]) -> &[u8] {
        let len = frame_len(frame[..4].try_into().unwrap()).unwrap();
        assert_eq!(len, frame.len() - 4);
        &frame[4..]
    }

    #[test]
    fn an_entry_is_fixed_width_big_endian() {
        let b = encode_entry(&entry(1));
        assert_eq!(
            b,
            [
                192, 0, 2, 10, 0x01, 0xbb, 17, 10, 0, 0, 1, 10, 1, 0, 2, 0x20, 0xfb, 1, 2, 3, 4, 5,
                6, 7, 8, 0x0a, 0x0b, 0x0c, 0x0d
            ]
        );
        assert_eq!(decode_entry(&b), Ok(entry(1)));
        let mut bad = b;
        bad[6] = 1;
        assert_eq!(decode_entry(&bad), Err(Reject::Malformed), "not TCP or UDP");
    }

    #[test]
    fn every_message_goes_through_both_directions() {
        let k = key(7);
        let (c, s) = hellos();
        let ((mut c_seal, mut c_open), (mut s_seal, mut s_open)) = session(&k, &c, &s);
        let msgs = [
            Message::Batch {
                sent_ms: 99,
                entries: (0..MAX_ENTRIES_PER_FRAME as u32).map(entry).collect(),
            },
            Message::SnapshotRequest,
            Message::SnapshotChunk {
                sent_ms: 1,
                entries: vec![entry(3)],
            },
            Message::SnapshotEnd { total: 12345 },
            Message::SnapshotRefused,
            Message::Corrections {
                sent_ms: 7,
                entries: vec![entry(4), entry(5)],
            },
            Message::Batch {
                sent_ms: 5,
                entries: vec![],
            },
        ];
        for m in &msgs {
            let f = c_seal.seal(m);
            assert!(f.len() - 4 <= MAX_FRAME);
            assert_eq!(s_open.open(body(&f)).as_ref(), Ok(m));
            let f = s_seal.seal(m);
            assert_eq!(c_open.open(body(&f)).as_ref(), Ok(m));
        }
    }

    #[test]
    fn the_handshake_needs_the_key_and_the_right_role() {
        let (c, s) = hellos();
        let good = proof(&key(1), Role::Server, &c, &s);
        assert_eq!(check_proof(&key(1), Role::Server, &c, &s, &good), Ok(()));
        assert_eq!(
            check_proof(&key(2), Role::Server, &c, &s, &good),
            Err(Reject::Handshake),
            "another key"
        );
        assert_eq!(
            check_proof(&key(1), Role::Client, &c, &s, &good),
            Err(Reject::Handshake),
            "the server's proof played back as the client's"
        );
        let (c2, _) = hellos();
        assert_eq!(
            check_proof(&key(1), Role::Server, &c2, &s, &good),
            Err(Reject::Handshake),
            "a proof from another connection (other nonce)"
        );
        assert_eq!(
            check_proof(&key(1), Role::Server, &c, &s, &good[..31]),
            Err(Reject::Handshake),
            "a cut proof"
        );
    }

    #[test]
    fn hellos_round_trip_and_refuse_strangers_and_other_versions() {
        let (c, _) = hellos();
        let b = c.encode();
        assert_eq!(Hello::decode(&b), Ok(c));
        let mut v = b;
        v[4] = VERSION + 1;
        assert_eq!(Hello::decode(&v), Err(Reject::Version));
        let mut m = b;
        m[0] = b'G';
        assert_eq!(Hello::decode(&m), Err(Reject::Magic));
        assert_ne!(hellos().0.nonce, c.nonce, "every hello has its own nonce");
    }

    #[test]
    fn a_forged_or_altered_frame_is_refused() {
        let (c, s) = hellos();
        let ((mut seal, _), (_, mut open)) = session(&key(1), &c, &s);
        let f = seal.seal(&Message::Batch {
            sent_ms: 1,
            entries: vec![entry(1)],
        });
        for at in [5, 20, f.len() - 1] {
            let mut bad = f.clone();
            bad[at] ^= 1;
            assert_eq!(open.open(body(&bad)), Err(Reject::FrameMac), "byte {at}");
        }
        // A frame made with the right layout but the wrong key.
        let ((mut forger, _), _) = session(&key(2), &c, &s);
        let forged = forger.seal(&Message::SnapshotRequest);
        assert_eq!(open.open(body(&forged)), Err(Reject::FrameMac));
        assert!(open.open(body(&f)).is_ok(), "the genuine one still opens");
    }

    #[test]
    fn a_replayed_or_reordered_frame_is_refused() {
        let (c, s) = hellos();
        let ((mut seal, _), (_, mut open)) = session(&key(1), &c, &s);
        let f0 = seal.seal(&Message::SnapshotRequest);
        let f1 = seal.seal(&Message::SnapshotEnd { total: 1 });
        assert_eq!(open.open(body(&f1)), Err(Reject::Sequence), "reordered");
        assert!(open.open(body(&f0)).is_ok());
        assert_eq!(open.open(body(&f0)), Err(Reject::Sequence), "replayed");
        assert!(open.open(body(&f1)).is_ok());
    }

    #[test]
    fn a_frame_from_another_session_or_reflected_is_refused() {
        let k = key(1);
        let (c, s) = hellos();
        let ((mut seal_a, mut open_a_client), _) = session(&k, &c, &s);
        let (c2, s2) = hellos();
        let (_, (_, mut open_b)) = session(&k, &c2, &s2);
        let f = seal_a.seal(&Message::SnapshotRequest);
        assert_eq!(open_b.open(body(&f)), Err(Reject::FrameMac), "spliced");
        assert_eq!(
            open_a_client.open(body(&f)),
            Err(Reject::FrameMac),
            "reflected back at its sender"
        );
    }

    #[test]
    fn oversize_truncated_and_malformed_frames_are_refused() {
        assert_eq!(
            frame_len(((MAX_FRAME + 1) as u32).to_be_bytes()),
            Err(Reject::Oversize)
        );
        assert_eq!(frame_len(u32::MAX.to_be_bytes()), Err(Reject::Oversize));
        assert_eq!(frame_len(3u32.to_be_bytes()), Err(Reject::Truncated));
        let (c, s) = hellos();
        let ((mut seal, _), (_, mut open)) = session(&k1(), &c, &s);
        assert_eq!(open.open(&[0; 20]), Err(Reject::Truncated));
        assert_eq!(open.open(&vec![0; MAX_FRAME + 1]), Err(Reject::Oversize));
        let f = seal.seal(&Message::SnapshotEnd { total: 1 });
        assert_eq!(
            open.open(&body(&f)[..f.len() - 5]),
            Err(Reject::FrameMac),
            "cut short"
        );
        // Authenticated but wrong inside: a count that does not match, an
        // unknown type, another version.
        // The next frame the opener expects, signed with the session's key.
        let mut raw = Sealer {
            key: seal.key,
            seq: open.seq,
        };
        let signed = |raw: &mut Sealer, version: u8, kind: u8, payload: &[u8]| {
            let mut b = vec![version, kind];
            b.extend_from_slice(&raw.seq.to_be_bytes());
            raw.seq += 1;
            b.extend_from_slice(payload);
            let tag = mac_of(&raw.key, &[&b]);
            b.extend_from_slice(&tag);
            b
        };
        let mut p = 2u16.to_be_bytes().to_vec();
        p.extend_from_slice(&0u64.to_be_bytes());
        p.extend_from_slice(&encode_entry(&entry(1)));
        let mut open2 = Opener {
            key: open.key,
            seq: open.seq,
        };
        assert_eq!(
            open2.open(&signed(&mut raw, VERSION, kind::BATCH, &p)),
            Err(Reject::Malformed)
        );
        assert_eq!(
            open2.open(&signed(&mut raw, VERSION, 99, &[])),
            Err(Reject::Malformed)
        );
        assert_eq!(
            open2.open(&signed(&mut raw, VERSION + 1, kind::SNAPSHOT_REQUEST, &[])),
            Err(Reject::Version)
        );
    }

    fn k1() -> Key {
        key(1)
    }

    #[test]
    fn lag_is_from_the_senders_last_sight_of_the_client() {
        let e = SyncEntry {
            idle_ms: 30,
            ..entry(1)
        };
        assert_eq!(lag_ms(1_000_100, 1_000_050, &e), 80);
        assert_eq!(lag_ms(10, 1_000, &e), 0, "a clock behind: no negative lag");
    }
}
