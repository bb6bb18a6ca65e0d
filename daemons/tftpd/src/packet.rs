//! TFTP wire format: RFC 1350 packets plus RFC 2347 option negotiation (blksize RFC 2348,
//! timeout and tsize RFC 2349, windowsize RFC 7440).
//!
//! This module exists so that the only code touching bytes from the network is pure,
//! synchronous and fuzzable (`daemons/tftpd/fuzz`, target `parse_packet`). It must never do
//! I/O, allocate in proportion to anything but its input, or panic: every index is checked and
//! every number is parsed with overflow checks. Policy (which options to grant, which files
//! exist) lives elsewhere.
//!
//! Parsing borrows from the datagram ([`Packet<'_>`]); nothing is copied on the hot path. Option
//! values that are malformed or outside their RFC range are dropped while parsing, as RFC 2347
//! lets a server ignore an option it does not accept, so a [`Options`] only ever holds values a
//! server may grant.

use std::fmt;

/// Largest datagram the server reads or writes: a DATA packet with the largest block size.
pub const MAX_PACKET: usize = 4 + MAX_BLKSIZE as usize;
/// RFC 1350's block size, used when the client does not negotiate `blksize`.
pub const DEFAULT_BLKSIZE: u16 = 512;
/// RFC 2348 bounds.
pub const MIN_BLKSIZE: u16 = 8;
/// RFC 2348 bounds.
pub const MAX_BLKSIZE: u16 = 65464;

const OP_RRQ: u16 = 1;
const OP_WRQ: u16 = 2;
const OP_DATA: u16 = 3;
const OP_ACK: u16 = 4;
const OP_ERROR: u16 = 5;
const OP_OACK: u16 = 6;

/// One TFTP packet, borrowing from the datagram it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    /// Read request.
    Rrq(Request<'a>),
    /// Write request (this server refuses them, but parses them to say so).
    Wrq(Request<'a>),
    /// A block of the file.
    Data {
        /// Block number (wraps from 65535 to 0).
        block: u16,
        /// Up to the negotiated block size; shorter means last.
        data: &'a [u8],
    },
    /// Acknowledgement of a block (0 acknowledges an OACK).
    Ack {
        /// The block acknowledged.
        block: u16,
    },
    /// The sender gives up.
    Error {
        /// Why, as a number.
        code: ErrorCode,
        /// Why, for people. Not necessarily UTF-8 when received.
        message: &'a [u8],
    },
    /// Option acknowledgement (RFC 2347).
    Oack(Options),
}

/// An RRQ or WRQ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    /// The file name as sent: ASCII, without its NUL.
    pub filename: &'a str,
    /// Transfer mode.
    pub mode: Mode,
    /// The options the client asked for that are well-formed and in range.
    pub options: Options,
}

/// RFC 1350 transfer modes (case-insensitive on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Bytes as they are.
    Octet,
    /// Text with CR LF line ends; this server refuses it (see the crate docs).
    Netascii,
    /// Obsolete.
    Mail,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Octet => "octet",
            Mode::Netascii => "netascii",
            Mode::Mail => "mail",
        }
    }
}

/// The options this server understands. `None`: absent, malformed or out of range.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// RFC 2348, 8..=65464.
    pub blksize: Option<u16>,
    /// RFC 2349, seconds, 1..=255.
    pub timeout: Option<u8>,
    /// RFC 2349, file size (0 in a read request).
    pub tsize: Option<u64>,
    /// RFC 7440, 1..=65535.
    pub windowsize: Option<u16>,
}

impl Options {
    /// Whether any option is present (an OACK with none must not be sent).
    pub fn is_empty(&self) -> bool {
        *self == Options::default()
    }
}

/// RFC 1350 error codes (8 from RFC 2347). Unknown codes are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// 0: see the message.
    NotDefined,
    /// 1.
    FileNotFound,
    /// 2.
    AccessViolation,
    /// 3.
    DiskFull,
    /// 4.
    IllegalOperation,
    /// 5.
    UnknownTid,
    /// 6.
    FileExists,
    /// 7.
    NoSuchUser,
    /// 8: option negotiation refused.
    OptionRefused,
    /// Anything else a peer sent.
    Other(u16),
}

impl From<u16> for ErrorCode {
    fn from(code: u16) -> Self {
        match code {
            0 => Self::NotDefined,
            1 => Self::FileNotFound,
            2 => Self::AccessViolation,
            3 => Self::DiskFull,
            4 => Self::IllegalOperation,
            5 => Self::UnknownTid,
            6 => Self::FileExists,
            7 => Self::NoSuchUser,
            8 => Self::OptionRefused,
            other => Self::Other(other),
        }
    }
}

impl From<ErrorCode> for u16 {
    fn from(code: ErrorCode) -> u16 {
        match code {
            ErrorCode::NotDefined => 0,
            ErrorCode::FileNotFound => 1,
            ErrorCode::AccessViolation => 2,
            ErrorCode::DiskFull => 3,
            ErrorCode::IllegalOperation => 4,
            ErrorCode::UnknownTid => 5,
            ErrorCode::FileExists => 6,
            ErrorCode::NoSuchUser => 7,
            ErrorCode::OptionRefused => 8,
            ErrorCode::Other(other) => other,
        }
    }
}

/// Why a datagram is not a TFTP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Fewer bytes than the opcode and fixed fields need.
    #[error("datagram too short")]
    TooShort,
    /// Opcode outside 1..=6.
    #[error("unknown opcode {0}")]
    UnknownOpcode(u16),
    /// A string field without its terminating NUL.
    #[error("unterminated string")]
    Unterminated,
    /// A file name or option that is not printable ASCII.
    #[error("non-ASCII or control characters")]
    NotAscii,
    /// An empty file name.
    #[error("empty file name")]
    EmptyFilename,
    /// A mode other than octet, netascii or mail.
    #[error("unknown transfer mode")]
    UnknownMode,
    /// An option name without a value.
    #[error("option without a value")]
    DanglingOption,
}

/// Parses one datagram. Never panics; work is linear in `bytes.len()`.
pub fn parse(bytes: &[u8]) -> Result<Packet<'_>, ParseError> {
    let (op, rest) = split_u16(bytes)?;
    match op {
        OP_RRQ => parse_request(rest).map(Packet::Rrq),
        OP_WRQ => parse_request(rest).map(Packet::Wrq),
        OP_DATA => {
            let (block, data) = split_u16(rest)?;
            Ok(Packet::Data { block, data })
        }
        OP_ACK => {
            // Some clients pad ACKs: trailing bytes are ignored rather than stall a transfer.
            let (block, _padding) = split_u16(rest)?;
            Ok(Packet::Ack { block })
        }
        OP_ERROR => {
            let (code, rest) = split_u16(rest)?;
            // The message's NUL is often missing in the wild: take up to the first NUL, if any.
            let message = rest.split(|&b| b == 0).next().unwrap_or_default();
            Ok(Packet::Error {
                code: ErrorCode::from(code),
                message,
            })
        }
        OP_OACK => parse_options(rest).map(Packet::Oack),
        other => Err(ParseError::UnknownOpcode(other)),
    }
}

fn split_u16(bytes: &[u8]) -> Result<(u16, &[u8]), ParseError> {
    match bytes {
        [hi, lo, rest @ ..] => Ok((u16::from_be_bytes([*hi, *lo]), rest)),
        _ => Err(ParseError::TooShort),
    }
}

/// Splits off one NUL-terminated printable-ASCII string.
fn split_str(bytes: &[u8]) -> Result<(&str, &[u8]), ParseError> {
    let end = bytes
        .iter()
        .position(|&b| b == 0)
        .ok_or(ParseError::Unterminated)?;
    let (field, rest) = bytes.split_at(end);
    if !field.iter().all(|b| (0x20..0x7f).contains(b)) {
        return Err(ParseError::NotAscii);
    }
    // Printable ASCII is valid UTF-8, so this cannot fail; map the impossible error anyway.
    let field = std::str::from_utf8(field).map_err(|_| ParseError::NotAscii)?;
    Ok((field, rest.get(1..).unwrap_or_default()))
}

fn parse_request(bytes: &[u8]) -> Result<Request<'_>, ParseError> {
    let (filename, rest) = split_str(bytes)?;
    if filename.is_empty() {
        return Err(ParseError::EmptyFilename);
    }
    let (mode, rest) = split_str(rest)?;
    let mode = if mode.eq_ignore_ascii_case("octet") {
        Mode::Octet
    } else if mode.eq_ignore_ascii_case("netascii") {
        Mode::Netascii
    } else if mode.eq_ignore_ascii_case("mail") {
        Mode::Mail
    } else {
        return Err(ParseError::UnknownMode);
    };
    let options = parse_options(rest)?;
    Ok(Request {
        filename,
        mode,
        options,
    })
}

fn parse_options(mut bytes: &[u8]) -> Result<Options, ParseError> {
    let mut options = Options::default();
    while !bytes.is_empty() {
        // Some clients pad requests with NULs; an empty name ends the list.
        if bytes.iter().all(|&b| b == 0) {
            break;
        }
        let (name, rest) = split_str(bytes)?;
        if rest.is_empty() {
            return Err(ParseError::DanglingOption);
        }
        let (value, rest) = split_str(rest)?;
        bytes = rest;
        // The first occurrence of an option wins; unknown options are ignored (RFC 2347).
        if name.eq_ignore_ascii_case("blksize") {
            options.blksize = options.blksize.or_else(|| {
                number(value)
                    .and_then(|v| u16::try_from(v).ok())
                    .filter(|v| (MIN_BLKSIZE..=MAX_BLKSIZE).contains(v))
            });
        } else if name.eq_ignore_ascii_case("timeout") {
            options.timeout = options.timeout.or_else(|| {
                number(value)
                    .and_then(|v| u8::try_from(v).ok())
                    .filter(|&v| v >= 1)
            });
        } else if name.eq_ignore_ascii_case("tsize") {
            options.tsize = options.tsize.or_else(|| number(value));
        } else if name.eq_ignore_ascii_case("windowsize") {
            options.windowsize = options.windowsize.or_else(|| {
                number(value)
                    .and_then(|v| u16::try_from(v).ok())
                    .filter(|&v| v >= 1)
            });
        }
    }
    Ok(options)
}

/// A decimal number of at most 20 digits, without sign or spaces.
fn number(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > 20 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

impl Packet<'_> {
    /// Appends the wire form to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Packet::Rrq(request) => encode_request(OP_RRQ, request, out),
            Packet::Wrq(request) => encode_request(OP_WRQ, request, out),
            Packet::Data { block, data } => {
                out.extend_from_slice(&data_header(*block));
                out.extend_from_slice(data);
            }
            Packet::Ack { block } => {
                out.extend_from_slice(&OP_ACK.to_be_bytes());
                out.extend_from_slice(&block.to_be_bytes());
            }
            Packet::Error { code, message } => {
                out.extend_from_slice(&OP_ERROR.to_be_bytes());
                out.extend_from_slice(&u16::from(*code).to_be_bytes());
                // A NUL inside would end the message early on the other side.
                out.extend(message.iter().copied().filter(|&b| b != 0));
                out.push(0);
            }
            Packet::Oack(options) => {
                out.extend_from_slice(&OP_OACK.to_be_bytes());
                encode_options(options, out);
            }
        }
    }

    /// The wire form in a new buffer.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }
}

/// The four header bytes of a DATA packet, for senders that read the payload in place.
pub fn data_header(block: u16) -> [u8; 4] {
    let [a, b] = OP_DATA.to_be_bytes();
    let [c, d] = block.to_be_bytes();
    [a, b, c, d]
}

/// An ERROR packet with a text message.
pub fn error_packet(code: ErrorCode, message: &str) -> Vec<u8> {
    Packet::Error {
        code,
        message: message.as_bytes(),
    }
    .to_bytes()
}

fn encode_request(op: u16, request: &Request<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(&op.to_be_bytes());
    out.extend_from_slice(request.filename.as_bytes());
    out.push(0);
    out.extend_from_slice(request.mode.as_str().as_bytes());
    out.push(0);
    encode_options(&request.options, out);
}

fn encode_options(options: &Options, out: &mut Vec<u8>) {
    let mut put = |name: &str, value: &dyn fmt::Display| {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(value.to_string().as_bytes());
        out.push(0);
    };
    if let Some(v) = options.blksize {
        put("blksize", &v);
    }
    if let Some(v) = options.timeout {
        put("timeout", &v);
    }
    if let Some(v) = options.tsize {
        put("tsize", &v);
    }
    if let Some(v) = options.windowsize {
        put("windowsize", &v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_a_real_atftp_request() {
        let bytes = b"\x00\x01undionly.kpxe\x00octet\x00blksize\x001468\x00tsize\x000\x00windowsize\x0016\x00";
        let Packet::Rrq(r) = parse(bytes).unwrap() else {
            panic!("not an RRQ")
        };
        assert_eq!(r.filename, "undionly.kpxe");
        assert_eq!(r.mode, Mode::Octet);
        assert_eq!(
            r.options,
            Options {
                blksize: Some(1468),
                timeout: None,
                tsize: Some(0),
                windowsize: Some(16)
            }
        );
    }

    #[test]
    fn option_names_and_modes_are_case_insensitive_and_unknown_ones_ignored() {
        let bytes = b"\x00\x01f\x00OcTeT\x00BLKSIZE\x00512\x00multicast\x00\x00TimeOut\x003\x00";
        let Packet::Rrq(r) = parse(bytes).unwrap() else {
            panic!("not an RRQ")
        };
        assert_eq!(r.mode, Mode::Octet);
        assert_eq!(r.options.blksize, Some(512));
        assert_eq!(r.options.timeout, Some(3));
    }

    #[test]
    fn out_of_range_or_malformed_option_values_are_dropped() {
        for (name, value) in [
            ("blksize", "7"),
            ("blksize", "65465"),
            ("blksize", "-1"),
            ("blksize", " 512"),
            ("timeout", "0"),
            ("timeout", "256"),
            ("windowsize", "0"),
            ("windowsize", "65536"),
            ("tsize", "99999999999999999999999"),
            ("tsize", ""),
        ] {
            let mut bytes = b"\x00\x01f\x00octet\x00".to_vec();
            bytes.extend_from_slice(name.as_bytes());
            bytes.push(0);
            bytes.extend_from_slice(value.as_bytes());
            bytes.push(0);
            let Packet::Rrq(r) = parse(&bytes).unwrap() else {
                panic!("not an RRQ")
            };
            assert!(r.options.is_empty(), "{name}={value} accepted");
        }
    }

    #[test]
    fn hostile_requests_are_refused() {
        let cases: [(&[u8], ParseError); 8] = [
            (b"", ParseError::TooShort),
            (b"\x00", ParseError::TooShort),
            (b"\x00\x09", ParseError::UnknownOpcode(9)),
            (b"\x00\x01file", ParseError::Unterminated),
            (b"\x00\x01\x00octet\x00", ParseError::EmptyFilename),
            (b"\x00\x01f\xffe\x00octet\x00", ParseError::NotAscii),
            (b"\x00\x01f\x00binary\x00", ParseError::UnknownMode),
            (
                b"\x00\x01f\x00octet\x00blksize\x00",
                ParseError::DanglingOption,
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(parse(bytes), Err(want), "{bytes:?}");
        }
        // A NUL smuggled into a name ends the name; what follows must then be a valid mode.
        assert_eq!(
            parse(b"\x00\x01undionly.kpxe\x00../../etc/passwd\x00octet\x00"),
            Err(ParseError::UnknownMode)
        );
    }

    #[test]
    fn padded_acks_are_accepted() {
        assert_eq!(
            parse(b"\x00\x04\x00\x07\x00\x00"),
            Ok(Packet::Ack { block: 7 })
        );
        assert_eq!(parse(b"\x00\x04\x00"), Err(ParseError::TooShort));
    }

    #[test]
    fn error_messages_without_nul_are_accepted() {
        assert_eq!(
            parse(b"\x00\x05\x00\x08no"),
            Ok(Packet::Error {
                code: ErrorCode::OptionRefused,
                message: b"no"
            })
        );
    }

    #[test]
    fn encodes_data_ack_and_errors() {
        assert_eq!(
            Packet::Data {
                block: 258,
                data: b"ab"
            }
            .to_bytes(),
            b"\x00\x03\x01\x02ab"
        );
        assert_eq!(Packet::Ack { block: 1 }.to_bytes(), b"\x00\x04\x00\x01");
        assert_eq!(
            error_packet(ErrorCode::AccessViolation, "no\0pe"),
            b"\x00\x05\x00\x02nope\x00"
        );
    }

    fn filename() -> impl Strategy<Value = String> {
        "[ -~]{1,64}"
    }

    fn options() -> impl Strategy<Value = Options> {
        (
            proptest::option::of(MIN_BLKSIZE..=MAX_BLKSIZE),
            proptest::option::of(1u8..=255),
            proptest::option::of(any::<u64>()),
            proptest::option::of(1u16..=u16::MAX),
        )
            .prop_map(|(blksize, timeout, tsize, windowsize)| Options {
                blksize,
                timeout,
                tsize,
                windowsize,
            })
    }

    fn mode() -> impl Strategy<Value = Mode> {
        prop_oneof![Just(Mode::Octet), Just(Mode::Netascii), Just(Mode::Mail)]
    }

    proptest! {
        #[test]
        fn requests_round_trip(name in filename(), mode in mode(), options in options(), write in any::<bool>()) {
            let request = Request { filename: &name, mode, options };
            let packet = if write { Packet::Wrq(request) } else { Packet::Rrq(request) };
            let bytes = packet.to_bytes();
            prop_assert_eq!(parse(&bytes), Ok(packet));
        }

        #[test]
        fn other_packets_round_trip(block in any::<u16>(), data in proptest::collection::vec(any::<u8>(), 0..1500),
                                    code in any::<u16>(), message in "[ -~]{0,100}", options in options()) {
            for packet in [
                Packet::Data { block, data: &data },
                Packet::Ack { block },
                Packet::Error { code: ErrorCode::from(code), message: message.as_bytes() },
                Packet::Oack(options),
            ] {
                let bytes = packet.to_bytes();
                prop_assert_eq!(parse(&bytes), Ok(packet));
            }
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn parse_never_panics_on_request_like_input(
            op in 1u16..=6,
            fields in proptest::collection::vec("[a-z0-9\\x00]{0,12}", 0..8),
        ) {
            let mut bytes = op.to_be_bytes().to_vec();
            for f in fields {
                bytes.extend_from_slice(f.as_bytes());
                bytes.push(0);
            }
            let _ = parse(&bytes);
        }
    }
}
