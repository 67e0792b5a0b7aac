//! Outbound HTTP that a tenant can aim (export webhooks) must not reach inside the deployment:
//! which addresses are public ([`is_global`], pure), and a resolver for reqwest
//! ([`PublicOnly`]) that connects only to names whose every address is.
//!
//! Why a resolver and not a check before sending: a name vetted by one lookup and connected by
//! another can be rebound in between (DNS rebinding: a TTL of 0, the first answer public, the
//! second 10.0.0.1). reqwest connects to exactly the addresses its resolver returns, so vetting
//! inside the resolver pins every connection to the addresses that were vetted. IP literals
//! never reach a resolver, so URLs are also checked up front ([`crate::webhook`]).
//! Redirects are off in every client built on this, and proxies too: a proxy would resolve the
//! target itself, out of our sight.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// How long one lookup may take: the system resolver's own default (5 s per try, 2 tries) is
/// longer than the gateway's route budget, and a webhook host that slow is not worth waiting for.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Why an outbound target is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("not a URL: {0}")]
    NotAUrl(String),
    #[error("scheme {0} is not allowed (https only)")]
    Scheme(String),
    #[error("the URL names no host")]
    NoHost,
    /// The lookup failed or timed out: possibly transient.
    #[error("{host} does not resolve: {reason}")]
    Unresolvable { host: String, reason: String },
    /// At least one address is not public: refused whatever the others are, since the client
    /// could connect to any of them.
    #[error("{host} resolves to {addr}, which is not a public address")]
    NotPublic { host: String, addr: IpAddr },
}

/// Whether `ip` is a public unicast address, reachable on the internet and nothing else.
/// Everything private, loopback, link-local, shared (CGNAT), documentation, benchmarking,
/// reserved, multicast or otherwise special is not; IPv6 forms that embed an IPv4 address
/// (mapped, compatible, NAT64, 6to4) are judged by that address.
pub fn is_global(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4_global(v4),
        IpAddr::V6(v6) => v6_global(v6),
    }
}

/// `a/len` as a (network, mask) test.
fn v4_in(ip: Ipv4Addr, net: [u8; 4], len: u32) -> bool {
    let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

/// The IPv4 ranges that are not public (IANA special-purpose registry, RFC 6890 and later).
const V4_NOT_GLOBAL: [([u8; 4], u32); 15] = [
    ([0, 0, 0, 0], 8),       // "this network", including 0.0.0.0
    ([10, 0, 0, 0], 8),      // private
    ([100, 64, 0, 0], 10),   // shared address space (CGNAT)
    ([127, 0, 0, 0], 8),     // loopback
    ([169, 254, 0, 0], 16),  // link-local (cloud metadata lives here)
    ([172, 16, 0, 0], 12),   // private
    ([192, 0, 0, 0], 24),    // IETF protocol assignments
    ([192, 0, 2, 0], 24),    // documentation TEST-NET-1
    ([192, 88, 99, 0], 24),  // deprecated 6to4 relay anycast
    ([192, 168, 0, 0], 16),  // private
    ([198, 18, 0, 0], 15),   // benchmarking
    ([198, 51, 100, 0], 24), // documentation TEST-NET-2
    ([203, 0, 113, 0], 24),  // documentation TEST-NET-3
    ([224, 0, 0, 0], 4),     // multicast
    ([240, 0, 0, 0], 4),     // reserved, and the broadcast address
];

fn v4_global(ip: Ipv4Addr) -> bool {
    !V4_NOT_GLOBAL.iter().any(|&(net, len)| v4_in(ip, net, len))
}

fn v6_in(ip: Ipv6Addr, net: Ipv6Addr, len: u32) -> bool {
    let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
    u128::from(ip) & mask == u128::from(net) & mask
}

const fn v6(s: [u16; 8]) -> Ipv6Addr {
    Ipv6Addr::new(s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7])
}

/// IPv6 prefixes whose low 32 bits are an IPv4 address the packet really goes to.
const EMBEDS_V4_LOW: [(Ipv6Addr, u32); 3] = [
    (v6([0, 0, 0, 0, 0, 0xffff, 0, 0]), 96),    // IPv4-mapped
    (v6([0; 8]), 96),                           // IPv4-compatible (and so :: and ::1)
    (v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0]), 96), // NAT64, the well-known prefix
];

/// The IPv4 address in the low 32 bits.
fn low_v4(ip: Ipv6Addr) -> Ipv4Addr {
    Ipv4Addr::from((u128::from(ip) & 0xffff_ffff) as u32)
}

fn v6_global(ip: Ipv6Addr) -> bool {
    // Forms that carry an IPv4 address reach that address (a dual-stack socket connects
    // `::ffff:10.0.0.1` to 10.0.0.1; a NAT64 gateway translates `64:ff9b::a00:1` to it).
    if EMBEDS_V4_LOW.iter().any(|&(net, len)| v6_in(ip, net, len)) {
        return v4_global(low_v4(ip));
    }
    if v6_in(ip, v6([0x2002, 0, 0, 0, 0, 0, 0, 0]), 16) {
        // 6to4: the IPv4 address is bits 16..48.
        let s = ip.segments();
        let v4 = (u32::from(s[1]) << 16) | u32::from(s[2]);
        return v4_global(Ipv4Addr::from(v4));
    }
    // Only 2000::/3 is allocated for global unicast; ULA fc00::/7, link-local fe80::/10,
    // site-local fec0::/10, multicast ff00::/8, discard 100::/64, local NAT64 64:ff9b:1::/48
    // all lie outside it.
    if !v6_in(ip, v6([0x2000, 0, 0, 0, 0, 0, 0, 0]), 3) {
        return false;
    }
    // Inside it: IETF protocol assignments 2001::/23 (Teredo 2001::/32, benchmarking,
    // ORCHID; the few anycast services in it are no webhook receivers) and documentation.
    !(v6_in(ip, v6([0x2001, 0, 0, 0, 0, 0, 0, 0]), 23)
        || v6_in(ip, v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0]), 32)
        || v6_in(ip, v6([0x3fff, 0, 0, 0, 0, 0, 0, 0]), 20))
}

/// Resolves `host` and returns its addresses (with `port`) only if every one is public.
pub async fn resolve_public(host: &str, port: u16) -> Result<Vec<SocketAddr>, TargetError> {
    let unresolvable = |reason: String| TargetError::Unresolvable {
        host: host.to_owned(),
        reason,
    };
    let addrs: Vec<SocketAddr> =
        tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host((host, port)))
            .await
            .map_err(|_| unresolvable(format!("no answer within {LOOKUP_TIMEOUT:?}")))?
            .map_err(|e| unresolvable(e.to_string()))?
            .collect();
    if addrs.is_empty() {
        return Err(unresolvable("no addresses".to_owned()));
    }
    if let Some(bad) = addrs.iter().find(|a| !is_global(a.ip())) {
        return Err(TargetError::NotPublic {
            host: host.to_owned(),
            addr: bad.ip(),
        });
    }
    Ok(addrs)
}

/// A reqwest resolver that answers only names whose every address is public; the client then
/// connects to exactly those addresses.
#[derive(Debug, Clone, Copy, Default)]
pub struct PublicOnly;

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            // Port 0: reqwest puts the URL's port (or the scheme's) in place.
            let addrs = resolve_public(&host, 0).await?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// An HTTP client for tenant-aimed targets: connects only to public addresses (unless
/// `allow_private`, for development and tests), follows no redirect and uses no proxy.
pub fn client(timeout: Duration, allow_private: bool) -> reqwest::Result<reqwest::Client> {
    let builder = reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy();
    if allow_private {
        builder.build()
    } else {
        builder.dns_resolver(PublicOnly).build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn every_special_range_is_refused_and_public_addresses_pass() {
        let not_global = [
            // IPv4
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "10.255.255.255",
            "172.16.0.1",
            "172.31.255.254",
            "192.168.1.1",
            "127.0.0.1",
            "127.255.255.254",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.254",
            "192.0.0.8",
            "192.0.0.170",
            "192.0.2.1",
            "198.51.100.7",
            "203.0.113.9",
            "198.18.0.1",
            "198.19.255.254",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "192.88.99.1",
            // IPv6
            "::",
            "::1",
            "fc00::1",
            "fd12:3456:789a::1",
            "fe80::1",
            "febf:ffff::1",
            "fec0::1",
            "ff02::1",
            "ff0e::1",
            "2001:db8::1",
            "2001:db8:ffff::1",
            "3fff::1",
            "2001::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "2001:2::1",
            "100::1",
            "64:ff9b:1::1",
            // IPv4 inside IPv6, judged by the IPv4 address
            "::ffff:10.0.0.1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::10.0.0.1",
            "64:ff9b::10.0.0.1",
            "64:ff9b::127.0.0.1",
            "2002:a00:1::1",
            "2002:7f00:1::",
            "2002:c0a8:101::1",
        ];
        for s in not_global {
            assert!(!is_global(ip(s)), "{s} must not count as public");
        }
        let global = [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.215.14",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.254",
            "2606:4700:4700::1111",
            "2a00:1450:4001:82b::200e",
            "2001:4860:4860::8888",
            "::ffff:8.8.8.8",
            "64:ff9b::8.8.8.8",
            "2002:808:808::1",
        ];
        for s in global {
            assert!(is_global(ip(s)), "{s} is public");
        }
    }

    /// A random address inside `net/len`.
    fn v4_within(net: [u8; 4], len: u32, noise: u32) -> Ipv4Addr {
        let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
        Ipv4Addr::from((u32::from(Ipv4Addr::from(net)) & mask) | (noise & !mask))
    }

    proptest! {
        #[test]
        fn embedded_ipv4_is_judged_as_itself(raw: u32) {
            let v4 = Ipv4Addr::from(raw);
            let want = is_global(IpAddr::V4(v4));
            let o = v4.octets();
            let mapped = v4.to_ipv6_mapped();
            let nat64 = Ipv6Addr::from((0x64_u128 << 112) | (0xff9b_u128 << 96) | u128::from(raw));
            let six_to_four = Ipv6Addr::new(
                0x2002,
                u16::from_be_bytes([o[0], o[1]]),
                u16::from_be_bytes([o[2], o[3]]),
                0, 0, 0, 0, 1,
            );
            prop_assert_eq!(is_global(IpAddr::V6(mapped)), want);
            prop_assert_eq!(is_global(IpAddr::V6(nat64)), want);
            prop_assert_eq!(is_global(IpAddr::V6(six_to_four)), want);
        }

        #[test]
        fn nothing_inside_a_special_range_is_public(pick in 0..V4_NOT_GLOBAL.len(), noise: u32) {
            let (net, len) = V4_NOT_GLOBAL[pick];
            prop_assert!(!is_global(IpAddr::V4(v4_within(net, len, noise))));
        }

        #[test]
        fn nothing_outside_2000_3_is_public_unless_it_embeds_public_ipv4(raw: u128) {
            let a = Ipv6Addr::from(raw);
            let embeds = EMBEDS_V4_LOW.iter().any(|&(net, len)| v6_in(a, net, len));
            if !embeds && !v6_in(a, v6([0x2000, 0, 0, 0, 0, 0, 0, 0]), 3) {
                prop_assert!(!is_global(IpAddr::V6(a)));
            }
        }
    }

    #[tokio::test]
    async fn names_are_refused_when_any_address_is_not_public() {
        // `localhost` resolves on every host, to loopback only.
        let err = resolve_public("localhost", 443).await.unwrap_err();
        assert!(
            matches!(err, TargetError::NotPublic { addr, .. } if addr.is_loopback()),
            "{err}"
        );
        // The resolver pins: a client built on it cannot connect to a name that resolves
        // inward, whatever the URL's port.
        let c = client(Duration::from_secs(5), false).unwrap();
        let sent = c.get("http://localhost:1/").send().await.unwrap_err();
        assert!(sent.is_connect(), "{sent:?}");
        let chain = std::iter::successors(Some(&sent as &(dyn std::error::Error + 'static)), |e| {
            e.source()
        })
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ");
        assert!(chain.contains("not a public address"), "{chain}");
    }
}
