//! Raw netlink framing shared by the ctnetlink client (conntrack.rs) and the sock_diag client
//! (sockets.rs): building a message, walking the messages of a reply with its
//! acknowledgements, errors and end of dump, walking attributes, and a blocking socket.
//!
//! Layouts and values from linux/netlink.h. Header and attribute fields are in host byte order;
//! every message and attribute starts on a 4-byte boundary (NLMSG_ALIGNTO, NLA_ALIGNTO).
//!
//! Parsing never panics and never reads past its buffer: a message whose length runs past the
//! buffer, or a remainder too short for a header, is an [`io::ErrorKind::InvalidData`] error; an
//! attribute that does not fit ends the walk of its buffer (the attributes before it are kept).

use std::io;

use rtnetlink::sys::{Socket, SocketAddr};

/// `struct nlmsghdr`: length (u32, header included), type (u16), flags (u16), sequence (u32),
/// port id (u32).
pub const NLMSG_HDRLEN: usize = 16;
/// `struct nlattr`: length (u16, header included), type (u16).
pub const NLA_HDRLEN: usize = 4;

/// Message type: an error, or with error 0 an acknowledgement; the payload is
/// `struct nlmsgerr` (a negative errno, then the request's header).
pub const NLMSG_ERROR: u16 = 2;
/// Message type: the end of a multipart (dump) reply.
pub const NLMSG_DONE: u16 = 3;

/// Flag: a request (every message sent to the kernel).
pub const NLM_F_REQUEST: u16 = 0x1;
/// Flag: acknowledge the request with an NLMSG_ERROR carrying error 0 on success.
pub const NLM_F_ACK: u16 = 0x4;
/// Flag: dump every matching object (NLM_F_ROOT | NLM_F_MATCH), ended by NLMSG_DONE.
pub const NLM_F_DUMP: u16 = 0x300;
/// Flag of a NEW request: create the object if it does not exist.
#[cfg(feature = "bench")]
pub const NLM_F_CREATE: u16 = 0x400;

/// Attribute type flag: the payload is itself a list of attributes.
pub const NLA_F_NESTED: u16 = 0x8000;
/// The attribute type without the NLA_F_NESTED and NLA_F_NET_BYTEORDER flags.
pub const NLA_TYPE_MASK: u16 = 0x3fff;

/// NLMSG_ALIGN / NLA_ALIGN: round up to a multiple of 4.
const fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// A message: header (`kind`, `flags`, `seq`, port id 0) and `payload`, followed by padding to a
/// 4-byte boundary so that messages can be concatenated into one batch. Panics if the message
/// would be longer than 4 GiB (the length field is 32 bits).
pub fn message(kind: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(NLMSG_HDRLEN + payload.len()).expect("netlink message over 4 GiB");
    let mut m = Vec::with_capacity(align(NLMSG_HDRLEN + payload.len()));
    m.extend_from_slice(&len.to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(payload);
    m.resize(align(m.len()), 0);
    m
}

/// Append an attribute (header, `payload`, padding to a 4-byte boundary) to `out`, which must
/// already end on a 4-byte boundary. Panics if `payload` is longer than 65,531 bytes (the length
/// field is 16 bits).
pub fn put_attr(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = u16::try_from(NLA_HDRLEN + payload.len()).expect("netlink attribute over 64 KiB");
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(align(out.len()), 0);
}

/// One message of a reply buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    pub kind: u16,
    pub seq: u32,
    /// What follows the header, up to the message's length (padding excluded).
    pub payload: &'a [u8],
}

/// What a message of a reply means for the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply<'a> {
    /// A message of the request's family (for example one object of a dump): its payload.
    Data(&'a [u8]),
    /// NLMSG_DONE: the dump is complete.
    Done,
    /// NLMSG_ERROR with error 0: the request succeeded.
    Ack,
}

impl<'a> Message<'a> {
    /// The message as an answer: an NLMSG_ERROR with a non-zero error is that errno as an
    /// `io::Error`; one too short to carry its error is InvalidData.
    pub fn reply(&self) -> io::Result<Reply<'a>> {
        match self.kind {
            NLMSG_DONE => Ok(Reply::Done),
            NLMSG_ERROR => match self.payload.get(..4) {
                Some(b) => match i32::from_ne_bytes([b[0], b[1], b[2], b[3]]) {
                    0 => Ok(Reply::Ack),
                    // The kernel sends -errno.
                    e => Err(io::Error::from_raw_os_error(e.wrapping_neg())),
                },
                None => Err(truncated()),
            },
            _ => Ok(Reply::Data(self.payload)),
        }
    }
}

fn truncated() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "truncated netlink message")
}

/// The messages of a reply buffer, in order. A message whose length is below the header's or
/// runs past the buffer, or a remainder shorter than a header, yields one InvalidData error and
/// ends the walk.
pub fn messages(buf: &[u8]) -> impl Iterator<Item = io::Result<Message<'_>>> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let Some((len, m)) = first_message(rest) else {
            rest = &[];
            return Some(Err(truncated()));
        };
        // The last message's padding may be missing.
        rest = rest.get(align(len)..).unwrap_or(&[]);
        Some(Ok(m))
    })
}

/// The message at the start of `buf` and its length, if it is whole.
fn first_message(buf: &[u8]) -> Option<(usize, Message<'_>)> {
    let h = buf.get(..NLMSG_HDRLEN)?;
    let len = usize::try_from(u32::from_ne_bytes([h[0], h[1], h[2], h[3]])).ok()?;
    let m = Message {
        kind: u16::from_ne_bytes([h[4], h[5]]),
        seq: u32::from_ne_bytes([h[8], h[9], h[10], h[11]]),
        payload: buf.get(NLMSG_HDRLEN..len)?,
    };
    Some((len, m))
}

/// The attributes in a buffer: (type without its flags, payload without padding). An
/// attribute whose length is below the header's or runs past the buffer ends the walk.
pub fn attrs(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        let h = rest.get(..NLA_HDRLEN)?;
        let len = usize::from(u16::from_ne_bytes([h[0], h[1]]));
        let kind = u16::from_ne_bytes([h[2], h[3]]) & NLA_TYPE_MASK;
        let Some(payload) = rest.get(NLA_HDRLEN..len) else {
            rest = &[];
            return None;
        };
        rest = rest.get(align(len)..).unwrap_or(&[]);
        Some((kind, payload))
    })
}

/// The payload of the first attribute of type `kind` in `buf`.
pub fn find(buf: &[u8], kind: u16) -> Option<&[u8]> {
    attrs(buf).find(|(k, _)| *k == kind).map(|(_, p)| p)
}

/// How long a netlink call waits for the kernel's next answer.
const ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A blocking netlink socket bound to the kernel, with its receive buffer.
pub struct Netlink {
    socket: Socket,
    buf: Vec<u8>,
    seq: u32,
}

impl Netlink {
    /// Open a socket of `protocol` (NETLINK_NETFILTER, NETLINK_SOCK_DIAG, ...) talking to the
    /// kernel, receiving up to `recv_len` bytes at a time: a longer datagram is cut, and its
    /// last message reads as truncated. The kernel sends a dump in datagrams of up to 32 KiB.
    pub fn open(protocol: isize, recv_len: usize) -> io::Result<Self> {
        let mut socket = Socket::new(protocol)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        // The kernel answers at once; an answer that never comes (a request it does not answer
        // the way we wait for) must fail the call, not hang the daemon.
        socket2::SockRef::from(&socket).set_read_timeout(Some(ANSWER_TIMEOUT))?;
        Ok(Netlink {
            socket,
            buf: vec![0; recv_len],
            seq: 0,
        })
    }

    /// Send one message or a batch of them.
    pub fn send(&self, msg: &[u8]) -> io::Result<()> {
        self.socket.send(msg, 0)?;
        Ok(())
    }

    #[cfg(feature = "bench")]
    /// Receive one datagram (with `flags` such as MSG_DONTWAIT); walk it with [`messages`].
    pub fn recv(&mut self, flags: libc::c_int) -> io::Result<&[u8]> {
        let n = self.socket.recv(&mut &mut self.buf[..], flags)?;
        Ok(self.buf.get(..n).unwrap_or(&self.buf))
    }

    /// Send a batch of messages, numbered `seqs`, each asking for an acknowledgement, in one
    /// datagram (buffers sized for it and for the acknowledgements, all of which the kernel
    /// queues before we read the first); wait for every acknowledgement. The first error reply
    /// is the result.
    pub fn batch(&mut self, data: &[u8], seqs: std::ops::Range<u32>) -> io::Result<()> {
        crate::dataplane::nft_ext::set_buffers(
            &self.socket,
            data.len() + (64 << 10),
            seqs.len().saturating_mul(1024) + (256 << 10),
        )?;
        if self.socket.send(data, 0)? < data.len() {
            return Err(io::Error::other("sendto did not send the whole batch"));
        }
        let mut left = seqs.len();
        while left > 0 {
            let n = self.socket.recv(&mut &mut self.buf[..], 0)?;
            for m in messages(self.buf.get(..n).unwrap_or(&self.buf)) {
                let m = m?;
                if seqs.contains(&m.seq) && m.reply()? == Reply::Ack {
                    left -= 1;
                }
            }
        }
        Ok(())
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Dump: send `kind` with NLM_F_REQUEST | NLM_F_DUMP and `payload`, and hand each answering
    /// message's payload to `each` until NLMSG_DONE. An NLMSG_ERROR ends the dump with its
    /// errno. Messages of other requests are skipped.
    pub fn dump(&mut self, kind: u16, payload: &[u8], each: impl FnMut(&[u8])) -> io::Result<()> {
        self.exchange(kind, NLM_F_REQUEST | NLM_F_DUMP, payload, each)
    }

    /// Send `kind` with NLM_F_REQUEST | NLM_F_ACK and `payload`, and wait for its answer:
    /// `Ok` on the acknowledgement, the errno of an error. Messages of other requests and
    /// data are skipped.
    pub fn request(&mut self, kind: u16, payload: &[u8]) -> io::Result<()> {
        self.query(kind, payload, |_| {})
    }

    /// Like [`request`](Self::request), handing the answer's data messages (a GET that is no
    /// dump answers with one) to `each` before the acknowledgement.
    pub fn query(&mut self, kind: u16, payload: &[u8], each: impl FnMut(&[u8])) -> io::Result<()> {
        self.exchange(kind, NLM_F_REQUEST | NLM_F_ACK, payload, each)
    }

    /// Send one message and hand the data of its answer to `each` until the answer ends (done,
    /// or the acknowledgement) or fails (the errno of an error).
    fn exchange(
        &mut self,
        kind: u16,
        flags: u16,
        payload: &[u8],
        mut each: impl FnMut(&[u8]),
    ) -> io::Result<()> {
        let seq = self.next_seq();
        self.send(&message(kind, flags, seq, payload))?;
        loop {
            let n = self.socket.recv(&mut &mut self.buf[..], 0)?;
            for m in messages(self.buf.get(..n).unwrap_or(&self.buf)) {
                let m = m?;
                if m.seq != seq {
                    continue;
                }
                match m.reply()? {
                    Reply::Data(p) => each(p),
                    Reply::Done | Reply::Ack => return Ok(()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn one(buf: &[u8]) -> io::Result<Message<'_>> {
        let mut it = messages(buf);
        let m = it.next().unwrap();
        assert!(it.next().is_none());
        m
    }

    #[test]
    fn builds_and_parses_back_a_message() {
        let mut payload = vec![2, 0, 0, 0];
        put_attr(&mut payload, 8, &0x100u32.to_be_bytes());
        put_attr(&mut payload, 3 | NLA_F_NESTED, &[7]);
        put_attr(&mut payload, 5, &[]);
        // Headers of 4 bytes, the 1-byte payload padded with 3 zeroes.
        assert_eq!(payload.len(), 4 + 8 + 8 + 4);
        let mut want = 5u16.to_ne_bytes().to_vec();
        want.extend((3 | NLA_F_NESTED).to_ne_bytes());
        want.extend([7, 0, 0, 0]);
        assert_eq!(&payload[12..20], &want[..]);
        let b = message(0x102, NLM_F_REQUEST | NLM_F_ACK, 9, &payload);
        assert_eq!(b.len(), 16 + 24);
        assert_eq!(u32::from_ne_bytes(b[..4].try_into().unwrap()), 40);
        assert_eq!(b[12..16], [0; 4]);
        let m = one(&b).unwrap();
        assert_eq!(u16::from_ne_bytes([b[6], b[7]]), NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!((m.kind, m.seq), (0x102, 9));
        assert_eq!(m.payload, &payload[..]);
        assert_eq!(m.reply().unwrap(), Reply::Data(&payload[..]));
        let a: Vec<_> = attrs(&m.payload[4..]).collect();
        assert_eq!(
            a,
            [
                (8, &0x100u32.to_be_bytes()[..]),
                (3, &[7][..]),
                (5, &[][..])
            ]
        );
        assert_eq!(find(&m.payload[4..], 3), Some(&[7][..]));
        assert_eq!(find(&m.payload[4..], 4), None);
    }

    #[test]
    fn pads_messages_so_they_batch() {
        let batch = [message(1, 0, 1, &[1, 2, 3, 4, 5]), message(2, 0, 2, &[])].concat();
        assert_eq!(batch.len(), 24 + 16);
        // The length excludes the padding.
        assert_eq!(u32::from_ne_bytes(batch[..4].try_into().unwrap()), 21);
        let ms: Vec<_> = messages(&batch).map(Result::unwrap).collect();
        assert_eq!(ms.len(), 2);
        assert_eq!((ms[0].seq, ms[0].payload), (1, &[1, 2, 3, 4, 5][..]));
        assert_eq!((ms[1].kind, ms[1].seq, ms[1].payload), (2, 2, &[][..]));
        // Without the last message's padding.
        let short = message(1, 0, 1, &[1]);
        assert_eq!(one(&short[..17]).unwrap().payload, &[1]);
    }

    #[test]
    fn an_error_message_is_its_errno() {
        let mut err = (-libc::ENOENT).to_ne_bytes().to_vec();
        err.extend_from_slice(&message(0x102, NLM_F_REQUEST, 3, &[])[..16]);
        let reply = [
            message(NLMSG_ERROR, 0, 3, &err),
            message(NLMSG_ERROR, 0, 4, &0i32.to_ne_bytes()),
            message(NLMSG_DONE, 0, 5, &0i32.to_ne_bytes()),
        ]
        .concat();
        let ms: Vec<_> = messages(&reply).map(Result::unwrap).collect();
        let e = ms[0].reply().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert_eq!(ms[1].reply().unwrap(), Reply::Ack);
        assert_eq!(ms[2].reply().unwrap(), Reply::Done);
        // An error message too short for its errno.
        let e = one(&message(NLMSG_ERROR, 0, 1, &[0, 0]))
            .unwrap()
            .reply()
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        // An absurd errno is carried, not a panic.
        let m = message(NLMSG_ERROR, 0, 1, &i32::MIN.to_ne_bytes());
        assert_eq!(
            one(&m).unwrap().reply().unwrap_err().raw_os_error(),
            Some(i32::MIN)
        );
    }

    #[test]
    fn a_truncated_message_is_an_error() {
        let good = message(1, 0, 1, &[0; 8]);
        let bad = |b: &[u8]| {
            let r: Vec<_> = messages(b).collect();
            assert_eq!(r.len(), 1, "{b:?}");
            assert_eq!(
                r[0].as_ref().unwrap_err().kind(),
                io::ErrorKind::InvalidData
            );
        };
        // Cut in the payload, in the header, a stray byte after a good message.
        bad(&good[..20]);
        bad(&good[..10]);
        let mut b = good.clone();
        b.push(0);
        let r: Vec<_> = messages(&b).collect();
        assert!(r[0].is_ok());
        assert_eq!(
            r[1].as_ref().unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        assert_eq!(r.len(), 2);
        // A length below the header's, and a huge one.
        for len in [0u32, 15, u32::MAX] {
            let mut b = good.clone();
            b[..4].copy_from_slice(&len.to_ne_bytes());
            bad(&b);
        }
        assert_eq!(messages(&[]).count(), 0);
    }

    #[test]
    fn a_truncated_attribute_ends_the_walk() {
        let mut b = Vec::new();
        put_attr(&mut b, 1, &[1, 2, 3, 4]);
        put_attr(&mut b, 2, &[5, 6, 7, 8]);
        // The second attribute cut short: only the first is seen.
        for cut in 9..b.len() {
            assert_eq!(
                attrs(&b[..cut]).collect::<Vec<_>>(),
                [(1, &[1, 2, 3, 4][..])]
            );
        }
        // Lengths below the header's or past the buffer.
        for len in [0u16, 3, 13, u16::MAX] {
            let mut c = b.clone();
            c[8..10].copy_from_slice(&len.to_ne_bytes());
            assert_eq!(attrs(&c).count(), 1, "{len}");
        }
        // The last attribute's padding may be missing.
        let mut c = Vec::new();
        put_attr(&mut c, 3, &[9]);
        assert_eq!(attrs(&c[..5]).collect::<Vec<_>>(), [(3, &[9][..])]);
        assert_eq!(find(&c[..4], 3), None);
        assert_eq!(attrs(&[]).count(), 0);
    }

    /// Whether `part` lies inside `whole` (a view into it, not a copy).
    fn within(part: &[u8], whole: &[u8]) -> bool {
        let (p, w) = (part.as_ptr() as usize, whole.as_ptr() as usize);
        p >= w && p + part.len() <= w + whole.len()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Whatever the kernel (or anyone able to write to our socket) sends: every message and
        /// attribute is a view inside the buffer, the walk ends, and an error ends it.
        #[test]
        fn any_bytes_walk_within_the_buffer(buf in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let mut seen = 0;
            let mut errors = 0;
            for m in messages(&buf) {
                proptest::prop_assert_eq!(errors, 0, "nothing after an error");
                match m {
                    Ok(m) => {
                        proptest::prop_assert!(within(m.payload, &buf));
                        for (_, a) in attrs(m.payload) {
                            proptest::prop_assert!(within(a, m.payload));
                        }
                        seen += 1;
                    }
                    Err(e) => {
                        proptest::prop_assert_eq!(e.kind(), io::ErrorKind::InvalidData);
                        errors += 1;
                    }
                }
            }
            proptest::prop_assert!(seen <= buf.len() / NLMSG_HDRLEN);
        }

        /// Messages and attributes built here read back as they were, in a batch of any size.
        #[test]
        fn built_messages_read_back(
            parts in proptest::collection::vec(
                (2u16..0x400, proptest::prelude::any::<u32>(), proptest::collection::vec(
                    (0u16..0x4000, proptest::collection::vec(proptest::prelude::any::<u8>(), 0..20)), 0..4)),
                1..6),
        ) {
            let mut batch = Vec::new();
            for (kind, seq, list) in &parts {
                let mut payload = Vec::new();
                for (k, v) in list {
                    put_attr(&mut payload, *k, v);
                }
                batch.extend(message(*kind, 0, *seq, &payload));
            }
            let got: Vec<Message<'_>> = messages(&batch).collect::<io::Result<_>>().unwrap();
            proptest::prop_assert_eq!(got.len(), parts.len());
            for (m, (kind, seq, list)) in got.iter().zip(&parts) {
                proptest::prop_assert_eq!((m.kind, m.seq), (*kind, *seq));
                let read: Vec<(u16, Vec<u8>)> = attrs(m.payload).map(|(k, v)| (k, v.to_vec())).collect();
                proptest::prop_assert_eq!(&read, list);
            }
        }
    }
}
