//! Byte layout of the takeover announcements: the gratuitous ARP frame
//! (IPv4) and the unsolicited Neighbor Advertisement frame (IPv6), both as
//! complete Ethernet frames for an `AF_PACKET`/`SOCK_RAW` socket, plus the
//! ICMPv6 checksum. Pure functions, no I/O.
//!
//! Gratuitous ARP (as keepalived's `vrrp_arp.c` sends it):
//! Ethernet dst `ff:ff:ff:ff:ff:ff`, ethertype 0x0806; ARP request (op 1),
//! sha = interface MAC, spa = tpa = VIP, tha = `ff:ff:ff:ff:ff:ff`.
//! A *request* (not a reply) is used because every Linux neighbour table
//! treats it as a GARP (`arp_is_garp`: spa == tpa), whereas a GARP reply is
//! only recognised when tha == sha.
//!
//! Unsolicited NA (RFC 4861 §7.2.6, as keepalived's `vrrp_ndisc.c`):
//! Ethernet dst `33:33:00:00:00:01`, ethertype 0x86dd; IPv6 src = VIP,
//! dst = `ff02::1`, hop limit 255, next header 58; ICMPv6 type 136 code 0,
//! flags Override (and Router if the interface forwards), Solicited clear,
//! target = VIP, option 2 (target link-layer address) = interface MAC.

use std::net::{Ipv4Addr, Ipv6Addr};

/// An Ethernet (EUI-48) hardware address.
pub type Mac = [u8; 6];

/// Ethertype of ARP.
pub const ETH_P_ARP: u16 = 0x0806;
/// Ethertype of IPv4 (the ARP protocol type).
pub const ETH_P_IP: u16 = 0x0800;
/// Ethertype of IPv6.
pub const ETH_P_IPV6: u16 = 0x86DD;
/// Ethernet broadcast address.
pub const BROADCAST_MAC: Mac = [0xff; 6];
/// Ethernet multicast address of `ff02::1` (RFC 2464 §7).
pub const ALL_NODES_MAC: Mac = [0x33, 0x33, 0, 0, 0, 1];
/// The link-local all-nodes multicast group.
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// ARP operation code of a request.
pub const ARPOP_REQUEST: u16 = 1;
/// ICMPv6 type of a Neighbor Advertisement.
pub const ND_NEIGHBOR_ADVERT: u8 = 136;
/// NA flag: the sender is a router.
pub const NA_FLAG_ROUTER: u8 = 0x80;
/// NA flag: the advertisement answers a solicitation.
pub const NA_FLAG_SOLICITED: u8 = 0x40;
/// NA flag: the advertisement overrides cached link-layer addresses.
pub const NA_FLAG_OVERRIDE: u8 = 0x20;
/// ND option type: target link-layer address.
pub const ND_OPT_TARGET_LINKADDR: u8 = 2;
/// IPv6 next-header value of ICMPv6.
pub const IPPROTO_ICMPV6: u8 = 58;
/// Hop limit required on Neighbor Discovery messages.
pub const ND_HOP_LIMIT: u8 = 255;

const ETH_HEADER_LEN: usize = 14;
const ARP_LEN: usize = 28;
const IPV6_HEADER_LEN: usize = 40;
/// ICMPv6 NA (24 bytes) plus one target link-layer address option (8 bytes).
pub const NA_ICMP_LEN: usize = 32;

/// Length of a gratuitous ARP frame (without the FCS or padding; the
/// kernel pads short frames itself).
pub const GARP_FRAME_LEN: usize = ETH_HEADER_LEN + ARP_LEN;
/// Length of an unsolicited NA frame.
pub const NA_FRAME_LEN: usize = ETH_HEADER_LEN + IPV6_HEADER_LEN + NA_ICMP_LEN;

fn ethernet_header(buf: &mut [u8], dst: Mac, src: Mac, ethertype: u16) {
    buf[0..6].copy_from_slice(&dst);
    buf[6..12].copy_from_slice(&src);
    buf[12..14].copy_from_slice(&ethertype.to_be_bytes());
}

/// The gratuitous ARP frame announcing that `vip` is at `mac`.
pub fn garp_frame(mac: Mac, vip: Ipv4Addr) -> [u8; GARP_FRAME_LEN] {
    let mut f = [0u8; GARP_FRAME_LEN];
    ethernet_header(&mut f, BROADCAST_MAC, mac, ETH_P_ARP);
    let arp = &mut f[ETH_HEADER_LEN..];
    arp[0..2].copy_from_slice(&1u16.to_be_bytes()); // hrd: Ethernet
    arp[2..4].copy_from_slice(&ETH_P_IP.to_be_bytes()); // pro: IPv4
    arp[4] = 6; // hln
    arp[5] = 4; // pln
    arp[6..8].copy_from_slice(&ARPOP_REQUEST.to_be_bytes());
    arp[8..14].copy_from_slice(&mac); // sha
    arp[14..18].copy_from_slice(&vip.octets()); // spa
    arp[18..24].copy_from_slice(&BROADCAST_MAC); // tha
    arp[24..28].copy_from_slice(&vip.octets()); // tpa
    f
}

/// The unsolicited Neighbor Advertisement frame announcing that `vip` is at
/// `mac`. `router` sets the R flag (set it when the interface forwards, as
/// keepalived does, so hosts do not drop this node from their router list).
pub fn unsolicited_na_frame(mac: Mac, vip: Ipv6Addr, router: bool) -> [u8; NA_FRAME_LEN] {
    let mut f = [0u8; NA_FRAME_LEN];
    ethernet_header(&mut f, ALL_NODES_MAC, mac, ETH_P_IPV6);

    let ip = &mut f[ETH_HEADER_LEN..ETH_HEADER_LEN + IPV6_HEADER_LEN];
    ip[0] = 0x60; // version 6, traffic class 0, flow label 0
    ip[4..6].copy_from_slice(&(NA_ICMP_LEN as u16).to_be_bytes());
    ip[6] = IPPROTO_ICMPV6;
    ip[7] = ND_HOP_LIMIT;
    ip[8..24].copy_from_slice(&vip.octets());
    ip[24..40].copy_from_slice(&ALL_NODES.octets());

    let icmp = &mut f[ETH_HEADER_LEN + IPV6_HEADER_LEN..];
    icmp[0] = ND_NEIGHBOR_ADVERT;
    icmp[1] = 0; // code
    icmp[4] = NA_FLAG_OVERRIDE | if router { NA_FLAG_ROUTER } else { 0 };
    icmp[8..24].copy_from_slice(&vip.octets()); // target
    icmp[24] = ND_OPT_TARGET_LINKADDR;
    icmp[25] = 1; // option length in units of 8 bytes
    icmp[26..32].copy_from_slice(&mac);
    let sum = icmpv6_checksum(&vip, &ALL_NODES, icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    f
}

/// The ICMPv6 checksum (RFC 4443 §2.3) of `message` sent from `src` to
/// `dst`: the one's complement of the one's complement sum over the IPv6
/// pseudo-header (RFC 8200 §8.1) and the message. The checksum field inside
/// `message` must be zero when computing it; summing a message whose
/// checksum field is filled in yields 0 when the checksum is right.
pub fn icmpv6_checksum(src: &Ipv6Addr, dst: &Ipv6Addr, message: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        let mut chunks = bytes.chunks_exact(2);
        for c in &mut chunks {
            sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        if let [last] = chunks.remainder() {
            sum += u32::from(*last) << 8;
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
    };
    add(&src.octets());
    add(&dst.octets());
    let len = u32::try_from(message.len()).unwrap_or(u32::MAX);
    add(&len.to_be_bytes());
    add(&[0, 0, 0, IPPROTO_ICMPV6]);
    add(message);
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: Mac = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];

    #[test]
    fn garp_layout() {
        let f = garp_frame(MAC, Ipv4Addr::new(10, 1, 2, 3));
        let expected: [u8; 42] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // eth dst: broadcast
            0x02, 0x11, 0x22, 0x33, 0x44, 0x55, // eth src
            0x08, 0x06, // ARP
            0x00, 0x01, // hrd Ethernet
            0x08, 0x00, // pro IPv4
            6, 4, // hln, pln
            0x00, 0x01, // op request
            0x02, 0x11, 0x22, 0x33, 0x44, 0x55, // sha
            10, 1, 2, 3, // spa
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // tha
            10, 1, 2, 3, // tpa
        ];
        assert_eq!(f, expected);
    }

    fn vip6() -> Ipv6Addr {
        "fd00:1:2::100".parse().unwrap_or(Ipv6Addr::LOCALHOST)
    }

    #[test]
    fn na_layout() {
        let vip = vip6();
        let f = unsolicited_na_frame(MAC, vip, false);
        assert_eq!(f.len(), 86);
        assert_eq!(&f[0..6], &[0x33, 0x33, 0, 0, 0, 1]);
        assert_eq!(&f[6..12], &MAC);
        assert_eq!(&f[12..14], &[0x86, 0xdd]);
        let ip = &f[14..54];
        assert_eq!(ip[0] >> 4, 6);
        assert_eq!(&ip[0..4], &[0x60, 0, 0, 0]);
        assert_eq!(u16::from_be_bytes([ip[4], ip[5]]), 32, "payload length");
        assert_eq!(ip[6], 58, "next header ICMPv6");
        assert_eq!(ip[7], 255, "hop limit");
        assert_eq!(&ip[8..24], &vip.octets(), "source is the VIP");
        assert_eq!(&ip[24..40], &ALL_NODES.octets());
        let icmp = &f[54..];
        assert_eq!(icmp[0], 136);
        assert_eq!(icmp[1], 0);
        assert_eq!(icmp[4], 0x20, "override only: not router, not solicited");
        assert_eq!(&icmp[5..8], &[0, 0, 0]);
        assert_eq!(&icmp[8..24], &vip.octets(), "target");
        assert_eq!(&icmp[24..26], &[2, 1], "target link-layer address option");
        assert_eq!(&icmp[26..32], &MAC);
    }

    #[test]
    fn na_router_flag() {
        let f = unsolicited_na_frame(MAC, vip6(), true);
        assert_eq!(f[54 + 4], 0xa0);
    }

    #[test]
    fn na_checksum_verifies() {
        let vip = vip6();
        let f = unsolicited_na_frame(MAC, vip, false);
        // Summing over the message with its checksum in place gives 0.
        assert_eq!(icmpv6_checksum(&vip, &ALL_NODES, &f[54..]), 0);
        // Any corruption is detected.
        let mut bad = f;
        bad[54 + 30] ^= 0x01;
        assert_ne!(icmpv6_checksum(&vip, &ALL_NODES, &bad[54..]), 0);
    }

    #[test]
    fn na_checksum_known_value() {
        // Reference value computed independently (Python, RFC 1071
        // arithmetic) for this exact message.
        let vip = vip6();
        let f = unsolicited_na_frame(MAC, vip, false);
        assert_eq!(u16::from_be_bytes([f[56], f[57]]), NA_KNOWN_CHECKSUM);
    }

    const NA_KNOWN_CHECKSUM: u16 = 0xf1fe;

    #[test]
    fn checksum_odd_length_pads_with_zero() {
        // Reference value from the same independent computation: an odd
        // trailing byte is summed as if followed by a zero byte.
        let a = Ipv6Addr::UNSPECIFIED;
        assert_eq!(icmpv6_checksum(&a, &a, &[0x12, 0x34, 0x56]), 0x978e);
    }
}
