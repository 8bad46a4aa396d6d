//! Numbers and addresses written as bytes on the request path, without `core::fmt` (its
//! formatter machinery costs more than the whole rest of an access-log line).

use std::net::IpAddr;

/// Lower-case hex digits by value.
pub(crate) const HEX: &[u8; 16] = b"0123456789abcdef";

/// Appends `n` as 32 lower-case hex digits (`{n:032x}`).
#[cfg(feature = "redis")]
pub(crate) fn push_hex_u128(out: &mut Vec<u8>, n: u128) {
    for b in n.to_be_bytes() {
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 0xf)]);
    }
}

/// Appends `n` in decimal.
pub(crate) fn push_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Appends `n` as exactly three digits, zero-padded (the fraction of a millisecond figure).
pub(crate) fn push_3_digits(out: &mut Vec<u8>, n: u16) {
    let n = n % 1000;
    out.extend_from_slice(&[
        b'0' + (n / 100) as u8,
        b'0' + (n / 10 % 10) as u8,
        b'0' + (n % 10) as u8,
    ]);
}

/// Appends `ip` in its usual text form (IPv6 as `Display` writes it, without brackets).
pub(crate) fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                if octet >= 100 {
                    out.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    out.push(b'0' + octet / 10 % 10);
                }
                out.push(b'0' + octet % 10);
            }
        }
        // Rare on the hot path, and its compression rules are long: the standard library's.
        IpAddr::V6(v6) => {
            use std::io::Write as _;
            let _ = write!(out, "{v6}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_addresses_match_display() {
        for n in [0u64, 7, 42, 999, 1000, 65_535, u64::MAX] {
            let mut out = Vec::new();
            push_u64(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
        for (n, s) in [(0u16, "000"), (7, "007"), (42, "042"), (999, "999")] {
            let mut out = Vec::new();
            push_3_digits(&mut out, n);
            assert_eq!(out, s.as_bytes());
        }
        for ip in [
            "0.0.0.0",
            "9.10.99.100",
            "255.10.1.100",
            "9.99.100.199",
            "255.255.255.255",
            "::1",
            "2001:db8::1",
            "2001:db8::7:0:1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut out = Vec::new();
            push_ip(&mut out, ip);
            assert_eq!(out, ip.to_string().as_bytes());
        }
    }
}
