//! What a backup that goes live puts on the LAN first: a RARP request from the guest's
//! MAC address, as VMware FT does. The guest has moved to another host, whose switch
//! port the LAN's bridges must learn now rather than when the guest next happens to
//! send: a broadcast frame from the guest's MAC updates every forwarding table on the
//! way. RARP needs no knowledge of the guest's IP addresses (a gratuitous ARP would),
//! and hosts that do not serve RARP ignore it.

/// A MAC address.
pub type Mac = [u8; 6];

/// Ethernet type of RARP (RFC 903).
const ETHERTYPE_RARP: u16 = 0x8035;
/// Bytes in the frame: an Ethernet header and a 28-byte ARP body, padded to the
/// 60-byte minimum (the FCS is the NIC's).
pub const FRAME_LEN: usize = 60;

/// The RARP "request reverse" frame that announces `mac`, broadcast.
pub fn rarp_announcement(mac: Mac) -> [u8; FRAME_LEN] {
    let mut f = [0u8; FRAME_LEN];
    f[0..6].copy_from_slice(&[0xff; 6]); // destination: broadcast
    f[6..12].copy_from_slice(&mac); // source: the guest
    f[12..14].copy_from_slice(&ETHERTYPE_RARP.to_be_bytes());
    let body = &mut f[14..42];
    body[0..2].copy_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    body[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // protocol: IPv4
    body[4] = 6; // hardware address length
    body[5] = 4; // protocol address length
    body[6..8].copy_from_slice(&3u16.to_be_bytes()); // operation: request reverse
    body[8..14].copy_from_slice(&mac); // sender hardware address
    body[18..24].copy_from_slice(&mac); // target hardware address
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_announcement_is_a_broadcast_rarp_request_from_the_mac() {
        let mac = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
        let f = rarp_announcement(mac);
        assert_eq!(f.len(), 60);
        assert_eq!(f[0..6], [0xff; 6]);
        assert_eq!(f[6..12], mac);
        assert_eq!(f[12..14], [0x80, 0x35]);
        // htype 1, ptype 0x0800, hlen 6, plen 4, op 3
        assert_eq!(f[14..22], [0, 1, 8, 0, 6, 4, 0, 3]);
        assert_eq!(f[22..28], mac, "sender hardware address");
        assert_eq!(f[28..32], [0; 4], "sender protocol address unknown");
        assert_eq!(f[32..38], mac, "target hardware address");
        assert_eq!(
            f[38..60],
            [0; 22],
            "target protocol address unknown, padding"
        );
    }
}
