//! RFC 6455 framing as Herald needs it: reading what a client sends ([`FrameReader`], a header
//! and then a payload piece at a time, in a few bytes of state) and writing server frames
//! (unmasked, never fragmented). The connection that drives them is `super`; why Herald frames
//! itself instead of using a WebSocket library is in `super`'s opening comment.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, ReadBuf};
use tokio_tungstenite::tungstenite;

/// Largest frame and message accepted from a client. Clients have nothing to send but control
/// frames (at most 125 bytes of payload); a frame announcing more is refused with
/// [`close_code::MESSAGE_TOO_BIG`] before any of it is read, and so is a fragmented message
/// once its frames add up to more.
pub const CLIENT_MESSAGE_BYTES_MAX: usize = 4 * 1024;

/// Bytes of a frame header at most: 2, then 8 of extended length, then 4 of mask.
pub(super) const FRAME_HEADER_BYTES_MAX: usize = 14;

/// Largest payload of a control frame (ping, pong, close; RFC 6455, section 5.5): more is a
/// protocol error.
const CONTROL_PAYLOAD_BYTES_MAX: usize = 125;

/// Bytes of a data frame's payload read at a time, into a buffer on the stack of the read (not
/// kept by the connection): checked, then thrown away. Clients send text rarely, if ever.
const PAYLOAD_READ_BYTES: usize = 1024;

/// The close codes Herald sends (RFC 6455, section 7.4.1).
pub mod close_code {
    /// `closed` with no reason to blame anyone (not used by the server yet; a peer's own
    /// close is answered with its code).
    pub const NORMAL: u16 = 1000;
    /// Malformed framing from the client (e.g. unmasked or reserved bits set).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A binary frame: Herald only understands text.
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// A text frame (or a close frame's reason) that is not UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// `closed` with `evicted`, `replaced`, `session_closed` or `token_expired`: the server
    /// ended this connection on purpose; reconnect only with a fresh token (`token_expired`)
    /// or not at all.
    pub const POLICY: u16 = 1008;
    /// A frame or message larger than [`super::CLIENT_MESSAGE_BYTES_MAX`].
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// `closed` with `error`: the server could not read the user's log.
    pub const INTERNAL_ERROR: u16 = 1011;
    /// `closed` with `lagging` or `shutdown`: reconnect (with back-off) and resume.
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// Frame opcodes (RFC 6455, section 5.2).
pub(super) mod opcode {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
}

/// What one whole frame from the peer asks of the connection.
#[derive(Debug, PartialEq)]
pub(super) enum Incoming {
    /// A ping: answer with a pong carrying this payload.
    Ping(Vec<u8>),
    /// A close frame: send this frame back (the peer's code and reason, or 1002 for a code
    /// that may not be sent), then end.
    Close(Vec<u8>),
    /// A pong, or a text frame (checked and ignored): only news that the peer is alive.
    Alive,
}

/// Why reading frames ended.
#[derive(Debug, PartialEq)]
pub(super) enum ReadEnd {
    /// The peer closed the connection (at a frame's start or in the middle of one) or it broke:
    /// there is no one to tell.
    Gone,
    /// The peer sent what Herald refuses: close with its code and reason.
    Refused(Refusal),
}

/// What the peer sent that Herald refuses, each with its close code and the close frame's reason.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Refusal {
    /// A frame, or a fragmented message, over [`CLIENT_MESSAGE_BYTES_MAX`].
    TooBig,
    /// Framing RFC 6455 forbids: reserved bits or opcodes, no mask, a fragmented or oversized
    /// control frame, a continuation of nothing, a new message inside one, a close frame of one
    /// byte.
    Malformed,
    /// A binary frame.
    Binary,
    /// Text that is not UTF-8.
    TextNotUtf8,
    /// A close frame whose reason is not UTF-8.
    CloseReasonNotUtf8,
}

impl Refusal {
    pub(super) fn close_code(self) -> u16 {
        match self {
            Refusal::TooBig => close_code::MESSAGE_TOO_BIG,
            Refusal::Malformed => close_code::PROTOCOL_ERROR,
            Refusal::Binary => close_code::UNSUPPORTED_DATA,
            Refusal::TextNotUtf8 | Refusal::CloseReasonNotUtf8 => close_code::INVALID_PAYLOAD,
        }
    }

    pub(super) fn reason(self) -> &'static str {
        match self {
            Refusal::TooBig => "frames from clients are at most 4 KiB",
            Refusal::Malformed => "malformed frame",
            Refusal::Binary => "binary frames are not accepted",
            Refusal::TextNotUtf8 => "text frames must be UTF-8",
            Refusal::CloseReasonNotUtf8 => "close reasons must be UTF-8",
        }
    }
}

const TOO_BIG: ReadEnd = ReadEnd::Refused(Refusal::TooBig);
const MALFORMED: ReadEnd = ReadEnd::Refused(Refusal::Malformed);

/// Reads the frames a client sends, exactly one header or payload piece per read: what a
/// connection keeps between reads is this struct (about 60 bytes), plus a control frame's
/// payload while it arrives.
///
/// Checks, in tungstenite's order (so the close codes are the ones Herald always sent): a frame
/// over [`CLIENT_MESSAGE_BYTES_MAX`] (1009, its payload not read), reserved bits, no mask, an
/// unknown opcode, a fragmented or oversized control frame, a continuation with no message to
/// continue or a new message inside one (1002), a binary frame (1003, once its payload has
/// been read past), text or a close reason that is not UTF-8 (1007), a close frame of one byte
/// (1002).
#[derive(Debug, Default)]
pub(super) struct FrameReader {
    /// The header being read: its first 2 bytes tell how long it is.
    header: [u8; FRAME_HEADER_BYTES_MAX],
    /// Bytes of `header` read so far.
    header_read: u8,
    /// The frame whose payload is being read, once its header is complete.
    frame: Option<FrameInProgress>,
    /// The text message the frames belong to, from its first frame to its last.
    text: Option<TextMessage>,
}

#[derive(Debug)]
struct FrameInProgress {
    opcode: u8,
    fin: bool,
    mask: [u8; 4],
    /// The payload's length: at most [`CLIENT_MESSAGE_BYTES_MAX`].
    len: u16,
    /// Bytes of the payload read so far.
    read: u16,
    /// A control frame's payload, gathered to answer it (empty otherwise).
    control: Vec<u8>,
    /// The frame is refused once its payload has been read past.
    refused: Option<Refusal>,
}

/// A text message being received: its size so far and its UTF-8 check.
#[derive(Debug, Default)]
struct TextMessage {
    /// At most [`CLIENT_MESSAGE_BYTES_MAX`].
    bytes: u16,
    utf8: Utf8Check,
}

impl FrameReader {
    /// Reads until a whole frame is in (or the peer is gone, or refused); cancel-safe.
    pub(super) fn poll_frame<IO: AsyncRead + Unpin>(
        &mut self,
        io: &mut IO,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Incoming, ReadEnd>> {
        loop {
            let Some(frame) = &mut self.frame else {
                let read = usize::from(self.header_read);
                let needed = header_bytes(&self.header[..read]);
                if read < needed {
                    let n = ready!(poll_read_some(io, cx, &mut self.header[read..needed]))?;
                    self.header_read += u8::try_from(n).expect("a header is at most 14 bytes");
                    continue;
                }
                self.header_read = 0;
                self.frame = Some(self.start_frame()?);
                continue;
            };
            if frame.read < frame.len {
                let mut chunk = [0u8; PAYLOAD_READ_BYTES];
                let wanted = usize::from(frame.len - frame.read).min(PAYLOAD_READ_BYTES);
                let n = ready!(poll_read_some(io, cx, &mut chunk[..wanted]))?;
                let piece = &mut chunk[..n];
                unmask(piece, frame.mask, usize::from(frame.read));
                frame.read += u16::try_from(n).expect("at most the frame's length");
                if frame.refused.is_some() {
                    // Read past: thrown away.
                } else if is_control(frame.opcode) {
                    frame.control.extend_from_slice(piece);
                } else if let Some(text) = &mut self.text
                    && !text.utf8.feed(piece)
                {
                    frame.refused = Some(Refusal::TextNotUtf8);
                }
                continue;
            }
            let frame = self.frame.take().expect("a frame is being read");
            return Poll::Ready(self.end_frame(frame));
        }
    }

    /// Checks the header just read; the frame whose payload comes next.
    fn start_frame(&mut self) -> Result<FrameInProgress, ReadEnd> {
        let header = &self.header;
        let fin = header[0] & 0x80 != 0;
        let reserved_bits = header[0] & 0x70;
        let opcode = header[0] & 0x0f;
        let masked = header[1] & 0x80 != 0;
        let (len, mask_at) = match header[1] & 0x7f {
            126 => (u64::from(u16::from_be_bytes([header[2], header[3]])), 4),
            127 => (u64::from_be_bytes(header[2..10].try_into().expect("8 bytes")), 10),
            len => (u64::from(len), 2),
        };
        let len = match u16::try_from(len) {
            Ok(len) if usize::from(len) <= CLIENT_MESSAGE_BYTES_MAX => len,
            _ => return Err(TOO_BIG),
        };
        if reserved_bits != 0 || !masked {
            // No extension is negotiated; clients must mask (RFC 6455, section 5.1).
            return Err(MALFORMED);
        }
        let mask = header[mask_at..mask_at + 4].try_into().expect("4 bytes");
        let mut refused = None;
        match opcode {
            opcode::CLOSE | opcode::PING | opcode::PONG => {
                if !fin || usize::from(len) > CONTROL_PAYLOAD_BYTES_MAX {
                    return Err(MALFORMED);
                }
            }
            opcode::CONTINUATION => {
                let Some(text) = &mut self.text else { return Err(MALFORMED) };
                // Both at most 4 KiB: no overflow.
                text.bytes += len;
                if usize::from(text.bytes) > CLIENT_MESSAGE_BYTES_MAX {
                    return Err(TOO_BIG);
                }
            }
            opcode::TEXT | opcode::BINARY if self.text.is_some() => return Err(MALFORMED),
            opcode::TEXT => self.text = Some(TextMessage { bytes: len, utf8: Utf8Check::default() }),
            opcode::BINARY => refused = Some(Refusal::Binary),
            _ => return Err(MALFORMED),
        }
        let control = if is_control(opcode) { Vec::with_capacity(usize::from(len)) } else { Vec::new() };
        Ok(FrameInProgress { opcode, fin, mask, len, read: 0, control, refused })
    }

    /// What a frame read to its end means.
    fn end_frame(&mut self, frame: FrameInProgress) -> Result<Incoming, ReadEnd> {
        if let Some(refusal) = frame.refused {
            return Err(ReadEnd::Refused(refusal));
        }
        match frame.opcode {
            opcode::PING => Ok(Incoming::Ping(frame.control)),
            opcode::PONG => Ok(Incoming::Alive),
            opcode::CLOSE => close_answer(&frame.control).map(Incoming::Close),
            // Text, or its continuation: the message ends with its last frame.
            _ => {
                if frame.fin {
                    let text = self.text.take().expect("a text frame began the message");
                    if !text.utf8.is_complete() {
                        return Err(ReadEnd::Refused(Refusal::TextNotUtf8));
                    }
                }
                Ok(Incoming::Alive)
            }
        }
    }
}

/// Reads some bytes into `buf` (not empty): how many, or `Gone` at the end of input or an error.
fn poll_read_some<IO: AsyncRead + Unpin>(
    io: &mut IO,
    cx: &mut Context<'_>,
    buf: &mut [u8],
) -> Poll<Result<usize, ReadEnd>> {
    let mut read = ReadBuf::new(buf);
    match ready!(Pin::new(io).poll_read(cx, &mut read)) {
        Ok(()) if !read.filled().is_empty() => Poll::Ready(Ok(read.filled().len())),
        _ => Poll::Ready(Err(ReadEnd::Gone)),
    }
}

/// Length of the header whose first bytes are `read`: 2 until those are in, then the extended
/// length and the mask they announce.
fn header_bytes(read: &[u8]) -> usize {
    let Some(&second) = read.get(1) else { return 2 };
    let extended_length = match second & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if second & 0x80 != 0 { 4 } else { 0 };
    2 + extended_length + mask
}

fn is_control(opcode: u8) -> bool {
    opcode & 0x8 != 0
}

/// Unmasks `piece`, which starts `offset` bytes into its frame's payload.
fn unmask(piece: &mut [u8], mask: [u8; 4], offset: usize) {
    for (i, byte) in piece.iter_mut().enumerate() {
        *byte ^= mask[(offset + i) % 4];
    }
}

/// The answer to the peer's close frame with `payload`: the same code and reason (an empty
/// one to an empty one), or 1002 for a code that may not be sent (1005, 1006, 1015, unassigned
/// ones), as tungstenite answered.
fn close_answer(payload: &[u8]) -> Result<Vec<u8>, ReadEnd> {
    let mut answer = Vec::new();
    match payload {
        [] => push_frame(&mut answer, opcode::CLOSE, &[]),
        [_] => return Err(MALFORMED),
        [high, low, reason @ ..] => {
            if std::str::from_utf8(reason).is_err() {
                return Err(ReadEnd::Refused(Refusal::CloseReasonNotUtf8));
            }
            let code = u16::from_be_bytes([*high, *low]);
            if tungstenite::protocol::frame::coding::CloseCode::from(code).is_allowed() {
                push_frame(&mut answer, opcode::CLOSE, payload);
            } else {
                answer = close_frame(close_code::PROTOCOL_ERROR, "that close code may not be sent");
            }
        }
    }
    Ok(answer)
}

/// Checks that text arriving in pieces is UTF-8, keeping only the bytes of a character cut
/// between two pieces (at most 3).
#[derive(Debug, Default)]
struct Utf8Check {
    cut: [u8; 3],
    cut_len: u8,
}

impl Utf8Check {
    /// Takes the next piece of the text; `false` once it cannot be UTF-8.
    fn feed(&mut self, mut piece: &[u8]) -> bool {
        if self.cut_len > 0 {
            // Finish the character cut at the end of the last piece.
            let had = usize::from(self.cut_len);
            let width = match self.cut[0] {
                0xc0..=0xdf => 2,
                0xe0..=0xef => 3,
                _ => 4,
            };
            let taken = (width - had).min(piece.len());
            let mut character = [0u8; 4];
            character[..had].copy_from_slice(&self.cut[..had]);
            character[had..had + taken].copy_from_slice(&piece[..taken]);
            piece = &piece[taken..];
            match std::str::from_utf8(&character[..had + taken]) {
                Ok(_) => self.cut_len = 0,
                // Still cut: this piece was shorter than the rest of the character.
                Err(error) if error.error_len().is_none() => {
                    self.cut[..had + taken].copy_from_slice(&character[..had + taken]);
                    self.cut_len = u8::try_from(had + taken).expect("at most 3");
                    return true;
                }
                Err(_) => return false,
            }
        }
        match std::str::from_utf8(piece) {
            Ok(_) => true,
            Err(error) if error.error_len().is_none() => {
                let cut = &piece[error.valid_up_to()..];
                self.cut[..cut.len()].copy_from_slice(cut);
                self.cut_len = u8::try_from(cut.len()).expect("at most 3");
                true
            }
            Err(_) => false,
        }
    }

    /// Whether the text fed so far ends on a whole character.
    fn is_complete(&self) -> bool {
        self.cut_len == 0
    }
}

/// Appends the header of a server frame: FIN (Herald never fragments), `opcode`, no mask, and
/// the payload's length in the shortest form.
pub(super) fn push_frame_header(out: &mut Vec<u8>, opcode: u8, payload_len: usize) {
    out.push(0x80 | opcode);
    if payload_len < 126 {
        out.push(payload_len as u8);
    } else if let Ok(len) = u16::try_from(payload_len) {
        out.push(126);
        out.extend_from_slice(&len.to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(payload_len as u64).to_be_bytes());
    }
}

pub(super) fn push_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.reserve(FRAME_HEADER_BYTES_MAX + payload.len());
    push_frame_header(out, opcode, payload.len());
    out.extend_from_slice(payload);
}

/// A close frame with `code` and `reason` (at most 123 bytes).
pub(super) fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    debug_assert!(2 + reason.len() <= CONTROL_PAYLOAD_BYTES_MAX, "close reason too long: {reason}");
    let mut frame = Vec::with_capacity(4 + reason.len());
    push_frame_header(&mut frame, opcode::CLOSE, 2 + reason.len());
    frame.extend_from_slice(&code.to_be_bytes());
    frame.extend_from_slice(reason.as_bytes());
    frame
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn server_frame_lengths_take_the_shortest_form() {
        for (len, header) in [
            (0, vec![0x81, 0]),
            (125, vec![0x81, 125]),
            (126, vec![0x81, 126, 0, 126]),
            (65_535, vec![0x81, 126, 0xff, 0xff]),
            (65_536, vec![0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
        ] {
            let mut frame = Vec::new();
            push_frame(&mut frame, opcode::TEXT, &vec![b'x'; len]);
            assert_eq!(&frame[..header.len()], &header[..], "{len}");
            assert_eq!(frame.len(), header.len() + len);
        }
    }

    /// A masked client frame.
    fn client_frame(first_byte: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut frame = vec![first_byte];
        match payload.len() {
            len if len < 126 => frame.push(0x80 | len as u8),
            len => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&u16::try_from(len).unwrap().to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        frame
    }

    /// What the reader makes of `bytes`, fed `piece` bytes per read: each frame's outcome, until
    /// the input ends or a frame is refused.
    fn read_all(bytes: &[u8], piece: usize) -> Vec<Result<Incoming, ReadEnd>> {
        let (mut client, mut server) = tokio::io::duplex(piece);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let bytes = bytes.to_vec();
            let writer = async move {
                for chunk in bytes.chunks(piece) {
                    // Fails once the reader has stopped (after a refusal).
                    if client.write_all(chunk).await.is_err() {
                        break;
                    }
                }
                drop(client);
            };
            let reader = async move {
                let mut reader = FrameReader::default();
                let mut got = Vec::new();
                loop {
                    let frame = std::future::poll_fn(|cx| reader.poll_frame(&mut server, cx)).await;
                    let end = frame.is_err();
                    got.push(frame);
                    if end {
                        return got;
                    }
                }
            };
            tokio::join!(writer, reader).1
        })
    }

    #[test]
    fn frames_are_read_whatever_the_reads_cut() {
        let text = "h\u{e9}llo \u{1f600} w\u{f6}rld".as_bytes();
        let mut input = client_frame(0x89, b"are you there"); // ping
        input.extend(client_frame(0x8a, b"")); // pong
        input.extend(client_frame(0x01, &text[..8])); // text, first fragment: cut inside 😀
        input.extend(client_frame(0x89, b"")); // a ping between fragments
        input.extend(client_frame(0x80, &text[8..])); // last fragment
        input.extend(client_frame(0x81, &vec![b'y'; 4000]));
        input.extend(client_frame(0x88, &[0x03, 0xe8, b'b', b'y', b'e'])); // close 1000 "bye"
        for piece in [1, 2, 3, 7, 64, 100_000] {
            let got = read_all(&input, piece);
            assert_eq!(
                got,
                [
                    Ok(Incoming::Ping(b"are you there".to_vec())),
                    Ok(Incoming::Alive),
                    Ok(Incoming::Alive),
                    Ok(Incoming::Ping(Vec::new())),
                    Ok(Incoming::Alive),
                    Ok(Incoming::Alive),
                    Ok(Incoming::Close(vec![0x88, 5, 0x03, 0xe8, b'b', b'y', b'e'])),
                    Err(ReadEnd::Gone),
                ],
                "{piece} bytes per read"
            );
        }
    }

    #[test]
    fn refusals_have_their_close_codes() {
        let refused = |bytes: Vec<u8>| read_all(&bytes, 5).pop().unwrap();
        let code = |bytes: Vec<u8>| match refused(bytes) {
            Err(ReadEnd::Refused(refusal)) => refusal.close_code(),
            other => panic!("not refused: {other:?}"),
        };
        assert_eq!(code(client_frame(0x81, &[0xff])), 1007);
        assert_eq!(code(client_frame(0x81, &"\u{e9}".as_bytes()[..1])), 1007, "text ends cut");
        assert_eq!(code(client_frame(0x82, b"bin")), 1003);
        assert_eq!(code(client_frame(0x81, &vec![b'x'; 4097])), 1009);
        let mut fragments = client_frame(0x01, &vec![b'x'; 4000]);
        fragments.extend(client_frame(0x80, &[b'x'; 97]));
        assert_eq!(code(fragments), 1009, "a message over 4 KiB in two frames");
        let mut interleaved = client_frame(0x01, b"a");
        interleaved.extend(client_frame(0x81, b"b"));
        assert_eq!(code(interleaved), 1002, "a new message inside one");
        assert_eq!(code(client_frame(0x80, b"a")), 1002, "a continuation of nothing");
        assert_eq!(code(client_frame(0x09, b"")), 1002, "a fragmented ping");
        assert_eq!(code(client_frame(0x89, &[0; 126])), 1002, "a ping over 125 bytes");
        assert_eq!(code(client_frame(0x83, b"")), 1002, "a reserved opcode");
        assert_eq!(code(client_frame(0xc1, b"")), 1002, "a reserved bit");
        assert_eq!(code(client_frame(0x88, &[3])), 1002, "a close frame of one byte");
        assert_eq!(code(client_frame(0x88, &[3, 0xe8, 0xff])), 1007, "a close reason not UTF-8");
        assert_eq!(code(vec![0x81, 0x02, b'h', b'i']), 1002, "unmasked");
        // A frame announcing more than 4 KiB is refused at its header.
        assert_eq!(code(vec![0x82, 0xff, 0, 0, 0, 0, 0x40, 0, 0, 0, 1, 2, 3, 4]), 1009);
        // A close code that may not be sent is answered with 1002.
        let answer = read_all(&client_frame(0x88, &[0x03, 0xee]), 5).remove(0);
        assert_eq!(answer, Ok(Incoming::Close(close_frame(1002, "that close code may not be sent"))));
    }

    #[test]
    fn a_frame_cut_short_is_the_peer_gone() {
        let frame = client_frame(0x81, b"hello");
        for len in 0..frame.len() {
            assert_eq!(read_all(&frame[..len], 3), [Err(ReadEnd::Gone)], "{len} bytes");
        }
    }

    proptest! {
        /// Text in any pieces is judged as `std` judges it whole.
        #[test]
        fn utf8_in_pieces_is_utf8_whole(
            text in prop_oneof![
                any::<String>().prop_map(String::into_bytes),
                proptest::collection::vec(any::<u8>(), 0..40),
                proptest::collection::vec(prop_oneof![Just(0x80u8), Just(0xc3), Just(0xe2), Just(0xf0), Just(b'a'), Just(0x9f)], 0..12),
            ],
            cuts in proptest::collection::vec(any::<proptest::sample::Index>(), 0..5),
        ) {
            let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(text.len() + 1)).collect();
            cuts.sort_unstable();
            let mut check = Utf8Check::default();
            let mut ok = true;
            let mut start = 0;
            for end in cuts.into_iter().chain([text.len()]) {
                ok &= check.feed(&text[start..end]);
                start = end;
            }
            let judged = ok && check.is_complete();
            prop_assert_eq!(judged, std::str::from_utf8(&text).is_ok());
        }
    }
}
