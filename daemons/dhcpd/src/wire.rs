//! The DHCPv4 wire format: bytes ↔ [`dhcproto`] messages, and the few facts policy needs.
//!
//! Pure and synchronous (no sockets, no clock), so the fuzz target drives it directly. It must
//! never panic on any input: anything that does not decode, is not a BOOTREQUEST, has no
//! message type or no Ethernet hardware address is a [`WireError`], dropped by the caller.

use std::net::Ipv4Addr;

use dhcproto::v4::{self, DhcpOption, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use dragonfly_core::MacAddr;

/// Smallest reply: BOOTP (RFC 951) clients and some PXE ROMs drop shorter packets.
pub const BOOTP_MIN_LEN: usize = 300;

/// iPXE's encapsulated options (175); sub-option 176 is "no-pxedhcp".
pub const OPT_IPXE: u8 = 175;

/// Why a datagram was dropped.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("does not decode as DHCP")]
    Decode(#[source] dhcproto::error::DecodeError),
    #[error("not a BOOTREQUEST")]
    NotRequest,
    #[error("no DHCP message type (plain BOOTP is not served)")]
    NoMessageType,
    #[error("hardware address is not a 6-byte Ethernet MAC")]
    NotEthernet,
    #[error("bad magic cookie")]
    Magic,
    #[error("option {0} has a length dhcproto cannot decode safely")]
    Hazard(u8),
}

/// Options whose decoder in dhcproto 0.15 asserts a length (`debug_assert!`) or subtracts
/// from it without checking (`options.rs`, `decode_inner`; found by the fuzz target and then by
/// reading every length use there): refused before dhcproto sees them. `len` is the length
/// dhcproto decodes, which is the *concatenated* length of consecutive fragments with the same
/// code (RFC 3396 long options), not the length byte of one fragment: two fragments of 4 bytes
/// each make one 8-byte option 152, and its `debug_assert!(len == 4)` fires. Every other
/// decoder there checks its length (`read_ipv4`, `read_ipv4s`, `read_slice`) or reads a fixed
/// number of bytes from the option's own buffer, which fails cleanly when it is too short.
/// None of these options is ever sent by a client (rapid commit aside, which must be empty
/// anyway).
fn hazardous(code: u8, len: usize) -> bool {
    match code {
        80 => len != 0,        // rapid commit: debug_assert!(len == 0)
        81 => len < 3,         // client FQDN: debug_assert!(len >= 3), then len - 3
        94 => len != 3,        // client network interface: debug_assert!(len == 3)
        151 => len < 1,        // bulk leasequery status: len - 1
        152..=155 => len != 4, // bulk leasequery times: debug_assert!(len == 4)
        _ => false,
    }
}

/// Walks the options the way dhcproto's decoder does and refuses any [`hazardous`] one.
///
/// dhcproto joins a fragment to the option before it when the codes are equal and nothing
/// (not even a Pad) lies between them, and decodes the joined run as one option with the sum of
/// the fragments' lengths; a Pad, an End, another code or the end of the datagram ends a run.
/// Each run is checked here on that summed length. A fragment that runs past the end of the
/// datagram is counted at its declared length (dhcproto then fails on it, which is safe).
fn check_options(bytes: &[u8]) -> Result<(), WireError> {
    // The option being assembled: its code and the summed length of its fragments so far.
    let mut run: Option<(u8, usize)> = None;
    let mut i = 240;
    loop {
        let code = bytes.get(i).copied();
        if let Some((c, len)) = run
            && code != Some(c)
        {
            if hazardous(c, len) {
                return Err(WireError::Hazard(c));
            }
            run = None;
        }
        match code {
            None | Some(255) => return Ok(()),
            Some(0) => i += 1,
            Some(c) => {
                let Some(&len) = bytes.get(i + 1) else {
                    return Ok(());
                };
                let len = usize::from(len);
                run = Some(match run {
                    Some((_, sum)) => (c, sum + len),
                    None => (c, len),
                });
                i += 2 + len;
            }
        }
    }
}

/// What kind of network-boot client sent the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootClient {
    /// A firmware PXE ROM (option 60 `PXEClient…`).
    Firmware,
    /// UEFI HTTP boot (option 60 `HTTPClient…`).
    Http,
    /// iPXE (user class `iPXE` or option 175 present).
    Ipxe,
}

impl BootClient {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Firmware => "firmware",
            Self::Http => "http",
            Self::Ipxe => "ipxe",
        }
    }
}

/// A decoded request and the facts policy reads from it.
#[derive(Debug, Clone)]
pub struct Request {
    pub msg: Message,
    pub kind: MessageType,
    pub mac: MacAddr,
    pub requested_ip: Option<Ipv4Addr>,
    pub server_id: Option<Ipv4Addr>,
    /// `None` when not a network-boot client.
    pub boot_client: Option<BootClient>,
    /// Option 93, first entry.
    pub arch: Option<u16>,
}

/// Decodes one datagram.
pub fn decode(bytes: &[u8]) -> Result<Request, WireError> {
    check_options(bytes)?;
    // The fixed header is 236 bytes plus the 4-byte cookie; dhcproto checks lengths as it goes.
    let msg = Message::decode(&mut Decoder::new(bytes)).map_err(WireError::Decode)?;
    if msg.opcode() != Opcode::BootRequest {
        return Err(WireError::NotRequest);
    }
    if bytes.get(236..240) != Some(&v4::MAGIC[..]) {
        return Err(WireError::Magic);
    }
    let kind = msg.opts().msg_type().ok_or(WireError::NoMessageType)?;
    if msg.htype() != v4::HType::Eth || msg.hlen() != 6 {
        return Err(WireError::NotEthernet);
    }
    let octets: [u8; 6] = msg
        .chaddr()
        .get(..6)
        .and_then(|c| c.try_into().ok())
        .ok_or(WireError::NotEthernet)?;
    let opts = msg.opts();
    let requested_ip = match opts.get(OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
        _ => None,
    };
    let server_id = match opts.get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
        _ => None,
    };
    let class = match opts.get(OptionCode::ClassIdentifier) {
        Some(DhcpOption::ClassIdentifier(c)) => c.as_slice(),
        _ => &[],
    };
    let user_class_ipxe = match opts.get(OptionCode::UserClass) {
        // iPXE sends the bare string; RFC 3004 clients a length-prefixed one. Accept both.
        Some(DhcpOption::UserClass(u)) => u.windows(4).any(|w| w == b"iPXE"),
        _ => false,
    };
    let boot_client = if user_class_ipxe || opts.get(OptionCode::Unknown(OPT_IPXE)).is_some() {
        Some(BootClient::Ipxe)
    } else if class.starts_with(b"HTTPClient") {
        Some(BootClient::Http)
    } else if class.starts_with(b"PXEClient") {
        Some(BootClient::Firmware)
    } else {
        None
    };
    let arch = match opts.get(OptionCode::ClientSystemArchitecture) {
        Some(DhcpOption::ClientSystemArchitecture(a)) => Some(a.0),
        _ => None,
    };
    Ok(Request {
        kind,
        mac: MacAddr::new(octets),
        requested_ip,
        server_id,
        boot_client,
        arch,
        msg,
    })
}

/// Why a reply could not be encoded (an option too long for its 255-byte field).
#[derive(Debug, thiserror::Error)]
#[error("encoding a reply")]
pub struct EncodeError(#[source] pub dhcproto::error::EncodeError);

/// Encodes a reply, padded with zeros (the Pad option) to [`BOOTP_MIN_LEN`].
pub fn encode(msg: &Message) -> Result<Vec<u8>, EncodeError> {
    let mut buf = Vec::with_capacity(BOOTP_MIN_LEN + 64);
    msg.encode(&mut Encoder::new(&mut buf))
        .map_err(EncodeError)?;
    if buf.len() < BOOTP_MIN_LEN {
        buf.resize(BOOTP_MIN_LEN, 0);
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dhcproto::v4::{Architecture, UnknownOption};

    fn discover() -> Message {
        let mut m = Message::new_with_id(
            7,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &[0x52, 0x54, 0, 1, 2, 3],
        );
        m.opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Discover));
        m
    }

    fn bytes(m: &Message) -> Vec<u8> {
        let mut b = Vec::new();
        m.encode(&mut Encoder::new(&mut b)).unwrap();
        b
    }

    /// The fuzz target's crash ce0c4414… (issue 7), byte for byte: two 4-byte
    /// fragments of option 152 in a row, which dhcproto joins into one 8-byte option and then
    /// asserts is 4 bytes long.
    const CRASH_152_SPLIT: &str = concat!(
        "0000ffff0120202020202000000000ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "ffffffffffffffffff4dffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "ffffffffffffff0000000000000000d9000000000000000000000000000b000000000b000000000000000d0d00980400",
        "0b000000000000000d0d00980400248f7a45000020202020202020202020a020202020202000e7204e4e4e4e4e4e4e4e",
        "4e4e4e4e4e4e4e4e4e4e4e4e4e4e4e4e4e4e4e4e4e4e4e4e4e200a0a2020202020202020000000000000000008000008",
        "000000000000002b0000000000002100000000000000000000000000000b000000000b000000000000000d0d00980400",
        "0b000000000000000d0d00980400248f00980400248f7a4500001e001e04000000280020",
    );

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn classifies_boot_clients() {
        let r = decode(&bytes(&discover())).unwrap();
        assert_eq!(
            (r.kind, r.boot_client, r.arch),
            (MessageType::Discover, None, None)
        );
        assert_eq!(r.mac.to_string(), "52:54:00:01:02:03");

        let mut m = discover();
        m.opts_mut().insert(DhcpOption::ClassIdentifier(
            b"PXEClient:Arch:00007:UNDI:003016".to_vec(),
        ));
        m.opts_mut()
            .insert(DhcpOption::ClientSystemArchitecture(Architecture::X64));
        let r = decode(&bytes(&m)).unwrap();
        assert_eq!(
            (r.boot_client, r.arch),
            (Some(BootClient::Firmware), Some(7))
        );

        m.opts_mut().insert(DhcpOption::ClassIdentifier(
            b"HTTPClient:Arch:00016".to_vec(),
        ));
        assert_eq!(
            decode(&bytes(&m)).unwrap().boot_client,
            Some(BootClient::Http)
        );

        m.opts_mut().insert(DhcpOption::UserClass(b"iPXE".to_vec()));
        assert_eq!(
            decode(&bytes(&m)).unwrap().boot_client,
            Some(BootClient::Ipxe)
        );

        let mut m = discover();
        m.opts_mut().insert(DhcpOption::Unknown(UnknownOption::new(
            OptionCode::Unknown(OPT_IPXE),
            vec![19, 1, 1],
        )));
        assert_eq!(
            decode(&bytes(&m)).unwrap().boot_client,
            Some(BootClient::Ipxe)
        );
    }

    #[test]
    fn refuses_what_it_cannot_serve() {
        assert!(matches!(decode(&[]), Err(WireError::Decode(_))));
        assert!(matches!(decode(&[1; 100]), Err(WireError::Decode(_))));
        let good = bytes(&discover());
        for cut in [0, 1, 20, 235, 239] {
            assert!(decode(&good[..cut]).is_err(), "{cut}");
        }
        let mut reply = discover();
        reply.set_opcode(Opcode::BootReply);
        assert!(matches!(decode(&bytes(&reply)), Err(WireError::NotRequest)));
        let mut bootp = discover();
        bootp.opts_mut().clear();
        assert!(matches!(
            decode(&bytes(&bootp)),
            Err(WireError::NoMessageType)
        ));
        let mut ib = discover();
        ib.set_chaddr(&[1; 16]);
        assert!(matches!(decode(&bytes(&ib)), Err(WireError::NotEthernet)));
        let mut hazard = good.clone();
        hazard.truncate(hazard.len() - 1); // drop End
        hazard.extend_from_slice(&[152, 2, 0, 0, 255]);
        assert!(matches!(decode(&hazard), Err(WireError::Hazard(152))));
        let mut magic = good.clone();
        magic[236] = 0;
        assert!(decode(&magic).is_err());
    }

    /// `good` with `extra` appended as options before its End.
    fn with_options(good: &[u8], extra: &[u8]) -> Vec<u8> {
        let mut b = good[..good.len() - 1].to_vec();
        b.extend_from_slice(extra);
        b.push(255);
        b
    }

    #[test]
    fn split_options_are_checked_on_their_concatenated_length() {
        let crash = hex(CRASH_152_SPLIT);
        assert!(matches!(decode(&crash), Err(WireError::Hazard(152))));
        let good = bytes(&discover());
        // RFC 3396: fragments in a row are one option. Each fragment of 94 alone is a legal
        // 3 bytes; joined they are 6, which dhcproto asserts against.
        let two_94 = with_options(&good, &[94, 3, 1, 2, 0, 94, 3, 1, 2, 0]);
        assert!(matches!(decode(&two_94), Err(WireError::Hazard(94))));
        // ... and fragments that are each wrong can be right together (1 + 2 = 3 bytes).
        let r = decode(&with_options(&good, &[94, 1, 1, 94, 2, 2, 0])).unwrap();
        assert_eq!(
            r.msg.opts().get(OptionCode::ClientNetworkInterface),
            Some(&DhcpOption::ClientNetworkInterface(1, 2, 0))
        );
        // A Pad between them makes two options, each decoded (and checked) alone.
        assert!(decode(&with_options(&good, &[94, 3, 1, 2, 0, 0, 94, 3, 1, 2, 0])).is_ok());
        for (code, bad) in [(80, 1), (81, 2), (151, 0), (152, 8), (153, 2), (155, 5)] {
            // The same bad total, split into fragments of at most 2 bytes.
            let mut opts = Vec::new();
            let mut left: u8 = bad;
            loop {
                let n = left.min(2);
                opts.extend_from_slice(&[code, n]);
                opts.extend(std::iter::repeat_n(0x20, usize::from(n)));
                left -= n;
                if left == 0 {
                    break;
                }
            }
            assert!(
                matches!(decode(&with_options(&good, &opts)), Err(WireError::Hazard(c)) if c == code),
                "option {code}, {bad} bytes in fragments"
            );
        }
    }

    /// Every option code, every concatenated length up to 12 bytes as one, two or three
    /// fragments, three fillings: decoding returns (an error or a request) and never panics.
    /// Covers dhcproto's length assertions beyond the ones the filter knows by name.
    #[test]
    fn no_option_code_or_length_panics_the_decoder() {
        let good = bytes(&discover());
        for code in 1..=254u8 {
            for total in 0..=12u8 {
                for split in [total, total / 2, total / 3] {
                    for fill in [0x00, 0xff, 0x21] {
                        let mut opts = Vec::new();
                        let mut left = total;
                        let step = if split == 0 { total } else { split };
                        loop {
                            let n = left.min(step);
                            opts.extend_from_slice(&[code, n]);
                            opts.extend(std::iter::repeat_n(fill, usize::from(n)));
                            left -= n;
                            if left == 0 {
                                break;
                            }
                        }
                        let _ = decode(&with_options(&good, &opts));
                    }
                }
            }
        }
    }

    #[test]
    fn replies_are_padded() {
        let mut m = discover();
        m.set_opcode(Opcode::BootReply);
        let b = encode(&m).unwrap();
        assert_eq!(b.len(), BOOTP_MIN_LEN);
        assert!(decode(&b).is_err(), "a reply is not a request");
    }
}
