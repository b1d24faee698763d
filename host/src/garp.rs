//! Gratuitous ARP, sent in-process: the announcement that an IPv4 address now lives behind this
//! node's interface, so the LAN's switches and neighbours send its traffic here at once instead of
//! waiting for their ARP entries to expire.
//!
//! One raw `AF_PACKET` socket per announcement (it needs `CAP_NET_RAW`, which the daemon has when it
//! can add addresses at all), one Ethernet frame per ARP: a broadcast ARP request whose sender and
//! target protocol addresses are both the announced address (RFC 5227's ARP announcement; what
//! `arping -U` and keepalived send). No process is started and nothing waits for an answer, so a
//! burst of five takes microseconds. The repeats (a second burst, a periodic refresh) are scheduled
//! by the caller ([`crate::vip`]).
//!
//! This is the only module of the crate with more than a single `unsafe` call (the others: loading a
//! compiled plugin from the daemon's own cache, and `malloc_trim` after a compile, both in
//! `policy::runtime`): four libc calls (`socket`, `ioctl`, `if_nametoindex`, `sendto`) that the safe
//! socket crates do not cover for link-layer addresses.

#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IP: u16 = 0x0800;
const ARPHRD_ETHER: u16 = 1;
const ARPOP_REQUEST: u16 = 1;

/// The Ethernet frame of one ARP announcement of `addr` from `mac` (42 bytes; the kernel pads it).
pub fn announcement(mac: [u8; 6], addr: Ipv4Addr) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]); // to every host on the link
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    f[14..16].copy_from_slice(&ARPHRD_ETHER.to_be_bytes());
    f[16..18].copy_from_slice(&ETH_P_IP.to_be_bytes());
    f[18] = 6; // hardware address length
    f[19] = 4; // protocol address length
    f[20..22].copy_from_slice(&ARPOP_REQUEST.to_be_bytes());
    f[22..28].copy_from_slice(&mac); // sender hardware address
    f[28..32].copy_from_slice(&addr.octets()); // sender protocol address
    // Target hardware address: zero (unknown); target protocol address: the same address.
    f[38..42].copy_from_slice(&addr.octets());
    f
}

/// A raw socket on one interface, ready to announce addresses there.
pub struct Announcer {
    socket: OwnedFd,
    ifindex: i32,
    mac: [u8; 6],
    interface: String,
}

impl Announcer {
    /// Open a raw socket for `interface` and read its hardware address. Errors name the interface
    /// and say what failed (no such interface, no `CAP_NET_RAW`, not an Ethernet-like link).
    pub fn open(interface: &str) -> Result<Announcer, String> {
        let name = CString::new(interface).map_err(|_| format!("{interface:?}: not an interface name"))?;
        let failed = |what: &str, e: io::Error| format!("{interface}: {what}: {e}");
        // SAFETY: plain FFI call with constant arguments; the result is checked below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, i32::from(ETH_P_ARP.to_be())) };
        if fd < 0 {
            return Err(failed("cannot open a raw socket for gratuitous ARP", io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a new descriptor this function owns from here on.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(failed("no such interface", io::Error::last_os_error()));
        }
        // SAFETY: `ifreq` is plain old data; zeroed is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        let bytes = name.as_bytes_with_nul();
        if bytes.len() > req.ifr_name.len() {
            return Err(format!("{interface}: interface name too long"));
        }
        for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
            *dst = *src as libc::c_char;
        }
        // SAFETY: SIOCGIFHWADDR reads `ifr_name` and writes `ifr_ifru.ifru_hwaddr` of `req`, which
        // lives across the call; the descriptor is open.
        if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) } < 0 {
            return Err(failed("cannot read its hardware address", io::Error::last_os_error()));
        }
        // SAFETY: the ioctl succeeded, so the `ifru_hwaddr` member of the union is the one written.
        let hw = unsafe { req.ifr_ifru.ifru_hwaddr };
        if hw.sa_family != ARPHRD_ETHER {
            return Err(format!("{interface}: not an Ethernet link (hardware type {}): no ARP there", hw.sa_family));
        }
        let mut mac = [0u8; 6];
        for (dst, src) in mac.iter_mut().zip(hw.sa_data.iter()) {
            *dst = *src as u8;
        }
        Ok(Announcer { socket, ifindex: ifindex as i32, mac, interface: interface.to_string() })
    }

    /// Send `count` announcements of `addr`, back to back.
    pub fn announce(&self, addr: Ipv4Addr, count: u32) -> Result<(), String> {
        let frame = announcement(self.mac, addr);
        // SAFETY: `sockaddr_ll` is plain old data; zeroed is a valid value.
        let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_protocol = ETH_P_ARP.to_be();
        to.sll_ifindex = self.ifindex;
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
        for _ in 0..count {
            // SAFETY: `frame` and `to` live across the call and their lengths are passed with them.
            let sent = unsafe {
                libc::sendto(
                    self.socket.as_raw_fd(),
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&to as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            if sent < 0 {
                return Err(format!("{}: gratuitous ARP for {addr} not sent: {}", self.interface, io::Error::last_os_error()));
            }
        }
        Ok(())
    }
}

/// Announce `addr` on `interface` `count` times, at once.
pub fn announce(interface: &str, addr: Ipv4Addr, count: u32) -> Result<(), String> {
    Announcer::open(interface)?.announce(addr, count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_is_an_rfc_5227_announcement() {
        let mac = [0x02, 0, 0, 0, 0, 0x01];
        let f = announcement(mac, Ipv4Addr::new(10, 77, 0, 100));
        assert_eq!(&f[0..6], &[0xff; 6], "broadcast");
        assert_eq!(&f[6..12], &mac);
        assert_eq!(&f[12..14], &[0x08, 0x06], "ARP");
        assert_eq!(&f[14..22], &[0, 1, 0x08, 0, 6, 4, 0, 1], "Ethernet/IPv4 request");
        assert_eq!(&f[22..28], &mac, "sender: this interface");
        assert_eq!(&f[28..32], &[10, 77, 0, 100]);
        assert_eq!(&f[32..38], &[0; 6], "target hardware address unknown");
        assert_eq!(&f[38..42], &[10, 77, 0, 100], "target: the same address");
    }

    #[test]
    fn an_unknown_interface_is_named_in_the_error() {
        let e = announce("no-such-if0", Ipv4Addr::LOCALHOST, 1).unwrap_err();
        assert!(e.starts_with("no-such-if0: "), "{e}");
    }

    #[test]
    fn loopback_has_no_arp() {
        // Needs CAP_NET_RAW (CI runs as root); without it the socket itself is refused, also named.
        let e = announce("lo", Ipv4Addr::LOCALHOST, 1).unwrap_err();
        assert!(e.starts_with("lo: "), "{e}");
    }
}
